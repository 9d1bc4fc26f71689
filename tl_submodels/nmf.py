"""Non-negative matrix factorisation for ``factorize``: the fit, and the choice of k by held-out entries.

``nmf`` fits ``data ~ W H`` with ``W, H >= 0`` (Lee-Seung multiplicative updates from a
deterministic NNDSVDa start, so equal inputs give equal factors), optionally on a subset of the
entries. ``choose_k`` hides a tenth of the entries (Wold's holdout / bi-cross-validation, as Owen
and Perry 2009) and picks the number of factors by the error on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm import tqdm

from tl_submodels.errors import TLSubmodelsError

__all__ = ["CV_RIDGE", "HOLDOUT", "K_TOLERANCE", "NMF_ITERS", "choose_k", "nmf"]

HOLDOUT = 10  # one entry in HOLDOUT is hidden when choosing k
NMF_ITERS = 500
# Ridge of the masked fits that choose k, as a fraction of the loss's mean curvature in one entry.
# Where a prompt's hidden entries are all that pin its use of a factor, that use is otherwise free
# to grow while fitting the noise of its other entries (measured on multitask-3l, 32 prompts a
# task: predictions of ~100 for effects of at most 1.8, held-out errors of ~800x, and k=2 chosen
# for four tasks). 0.01 of 0.003, 0.01, 0.03, 0.1 on the zoo's multitask and harmful models.
CV_RIDGE = 0.01
# Held-out errors (relative to the hidden entries' sum of squares) closer than this count as equal
# when choosing k: on a matrix of exact low rank the error keeps falling by ~1e-4 beyond the true k,
# less than one standard error would forgive when the rows agree that closely.
K_TOLERANCE = 0.01


def choose_k(
    data: Float[Tensor, "rows cols"], keys: Sequence[int], k_max: int, *, progress: bool = False
) -> tuple[int, dict[int, float], dict[int, float]]:
    """The number of factors of non-negative ``data`` by held-out entries: ``(k, errors, standard errors)``.

    One entry in ``HOLDOUT`` is hidden (which ones depends on each row's ``keys`` entry, not on its
    position, so reordering the rows changes nothing), :func:`nmf` is fitted on the rest for each k
    from 1 to ``k_max``, and each k's error on the hidden entries (relative to their sum of squares)
    is recorded with its standard error over the rows. The k chosen is the smallest within one
    standard error (and at least ``K_TOLERANCE``) of the least error (Breiman's rule), as the error
    curve is often flat beyond the true k.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> planted = torch.rand(60, 2, generator=g) @ torch.rand(2, 30, generator=g)
        >>> k, errors, se = choose_k(planted, list(range(60)), 5)
        >>> k
        2
    """
    if not 1 <= k_max <= min(data.shape):
        raise TLSubmodelsError(
            f"k_max={k_max} for a {tuple(data.shape)} matrix: choose 1 <= k_max <= {min(data.shape)}"
        )
    if len(keys) != data.shape[0]:
        raise TLSubmodelsError(f"{len(keys)} keys for {data.shape[0]} rows: pass one key per row")
    n_rows, n_cols = data.shape
    mask = _holdout_mask(list(keys), n_cols)
    hidden = ~mask
    total = (data[hidden] ** 2).sum().clamp_min(1e-30)
    errors: dict[int, float] = {}
    error_se: dict[int, float] = {}
    for cand in tqdm(range(1, k_max + 1), desc="choosing k", disable=not progress):
        w, h = nmf(data, cand, mask=mask)
        per_row = (((data - w @ h) ** 2) * hidden).sum(1)
        errors[cand] = float(per_row.sum() / total)
        error_se[cand] = float(per_row.std() * n_rows**0.5 / total) if n_rows > 1 else 0.0
    best = min(errors, key=lambda c: (errors[c], c))
    k = min(c for c in errors if errors[c] <= errors[best] + max(error_se[best], K_TOLERANCE))
    return k, errors, error_se


def _holdout_mask(keys: list[int], n_cols: int) -> Tensor:
    """True where an entry is used for fitting; each row's hidden entries are seeded by its content."""
    rows = []
    for key in keys:
        gen = torch.Generator().manual_seed(key)
        rows.append(torch.randint(0, HOLDOUT, (n_cols,), generator=gen) != 0)
    return torch.stack(rows)


def nmf(
    data: Float[Tensor, "rows cols"], k: int, *, mask: Tensor | None = None, iters: int = NMF_ITERS
) -> tuple[Float[Tensor, "rows k"], Float[Tensor, "k cols"]]:
    """Non-negative ``data ~ W @ H`` (Frobenius loss, Lee-Seung multiplicative updates, NNDSVDa start).

    ``mask`` (bool, same shape) restricts the loss to the entries marked True, and adds a small
    ridge (``CV_RIDGE`` times the loss's mean curvature in one entry of ``W``, and of ``H``) that
    holds at zero what the kept entries leave undetermined, so that the hidden entries' predictions
    stay bounded. Without a mask the fit is unregularised.

    Example:
        >>> w, h = nmf(torch.rand(20, 8), 2)
        >>> (w @ h).shape
        torch.Size([20, 8])
    """
    if (data < 0).any():
        raise TLSubmodelsError("nmf needs a non-negative matrix")
    x = data.double()
    m = torch.ones_like(x) if mask is None else mask.double()
    w, h = _nndsvda(x * m if mask is not None else x, k)
    eps = 1e-12
    mx = m * x
    ridge = CV_RIDGE * float(m.mean()) / k if mask is not None else 0.0
    for _ in range(iters):
        # the loss's curvature in W[i, j] is sum_c m[i, c] h[j, c]^2, on average mean(m) |h|^2 / k
        h *= (w.T @ mx) / (w.T @ (m * (w @ h)) + ridge * (w * w).sum() * h + eps)
        w *= (mx @ h.T) / ((m * (w @ h)) @ h.T + ridge * (h * h).sum() * w + eps)
    return w, h


def _nndsvda(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """NNDSVD start (Boutsidis and Gallopoulos 2008), zeros filled with the data mean (the "a" variant)."""
    u, s, vt = torch.linalg.svd(x, full_matrices=False)
    w = torch.zeros(x.shape[0], k, dtype=x.dtype)
    h = torch.zeros(k, x.shape[1], dtype=x.dtype)
    for j in range(min(k, len(s))):
        uj, vj = u[:, j], vt[j]
        up, un, vp, vn = uj.clamp_min(0), (-uj).clamp_min(0), vj.clamp_min(0), (-vj).clamp_min(0)
        pos, neg = up.norm() * vp.norm(), un.norm() * vn.norm()
        a, b, size = (up, vp, pos) if pos >= neg else (un, vn, neg)
        if size <= 0:
            continue
        scale = (s[j] * size).sqrt()
        w[:, j] = scale * a / a.norm()
        h[j] = scale * b / b.norm()
    fill = x.mean()
    w[w == 0], h[h == 0] = fill, fill
    return w, h
