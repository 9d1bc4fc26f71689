"""Uncertainty over prompts: bootstrap intervals and per-component tests with false-discovery control.

Every number tl_submodels reports is a function of means over prompts (a metric is the mean of its
per-example values; faithfulness a ratio of differences of such means). So the bootstrap here works
on those means directly: a resample is a row of multinomial weights over the prompts, every
resample's means are one matrix product, and the jackknife that BCa needs is the leave-one-out
means, ``(sum - x_i) / (n - 1)``, with no refit. That keeps intervals over thousands of components
(every neuron) cheap in memory, where a generic bootstrap would hold ``[resamples, prompts,
components]`` (the reason this is not ``scipy.stats.bootstrap``).

Intervals are BCa (bias-corrected and accelerated, Efron 1987): percentile intervals shifted for the
bias and skew of the statistic, which a ratio such as faithfulness has at 64 prompts. An interval of
a statistic that no resample moves (every prompt gives the same value) is the point itself.

Component tests are two-sided one-sample t-tests of the per-example effects against zero
(``scipy.stats.ttest_1samp``), with the Benjamini-Hochberg procedure over all tested components
(``scipy.stats.false_discovery_control``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from tl_submodels.errors import TLSubmodelsError

__all__ = [
    "DEFAULT_N_BOOT",
    "bca",
    "check_alpha",
    "check_n_boot",
    "cluster_sums",
    "faithfulness",
    "p_values",
    "reject",
    "resample_weights",
]

# resamples: between seeds, a 95% BCa interval's ends jitter by 1-6% of its width (measured on 64 skewed values)
DEFAULT_N_BOOT = 1000
COLUMNS_PER_PRODUCT = 4096  # components per product: bounds the [n_boot, columns] and [n, k, columns] arrays


def check_n_boot(n_boot: int) -> None:
    """Refuse a number of bootstrap resamples below 2 (or not an int).

    Example:
        >>> check_n_boot(1000)
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 2:
        raise TLSubmodelsError(f"n_boot is a number of bootstrap resamples, at least 2 (1000 is usual); got {n_boot!r}")


def check_alpha(alpha: float) -> None:
    """Refuse a significance level outside (0, 1).

    Example:
        >>> check_alpha(0.05)
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise TLSubmodelsError(f"alpha is a false-discovery rate in (0, 1), for example 0.05; got {alpha!r}")


def resample_weights(n: int, n_boot: int, seed: int) -> Float[Tensor, "n_boot n"]:
    """``n_boot`` bootstrap resamples of ``n`` prompts as weights: row b, column i is how often resample b
    drew prompt i, over n, so that ``weights @ x`` is every resample's mean of ``x``.

    Example:
        >>> w = resample_weights(4, 3, seed=0)
        >>> w.shape, bool(torch.allclose(w.sum(1), torch.ones(3, dtype=w.dtype)))
        (torch.Size([3, 4]), True)
    """
    check_n_boot(n_boot)
    if n < 2:
        raise TLSubmodelsError(f"a bootstrap over prompts needs at least 2 prompts, got {n}")
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (n_boot, n), generator=gen)
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_boot, n, dtype=torch.float64)
    )
    return counts / n


def bca(
    columns: Float[Tensor, "n k *rest"],
    statistic: Callable[..., Tensor],
    *,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[Float[Tensor, " *rest"], Float[Tensor, " *rest"]]:
    """BCa interval of ``statistic`` of the means of ``k`` paired per-prompt quantities, for every trailing index.

    ``columns[i, j, ...]`` is quantity ``j`` measured on prompt ``i``; ``statistic`` takes the ``k``
    quantities' means as ``k`` tensors (of one shape, with leading axes for the resamples) and returns
    the statistic elementwise. Prompts are resampled together, so quantities measured on the same
    prompt stay paired.

    Example:
        >>> x = torch.randn(64, 1, generator=torch.Generator().manual_seed(0)) + 1.0
        >>> low, high = bca(x, lambda mean: mean, n_boot=500)
        >>> bool(low < x.mean() < high)
        True
    """
    if not 0 < level < 1:
        raise TLSubmodelsError(f"level is a confidence level in (0, 1), for example 0.95; got {level!r}")
    if columns.ndim < 2:
        raise TLSubmodelsError(f"columns must be [prompts, quantities, ...], got shape {list(columns.shape)}")
    n, k, rest = columns.shape[0], columns.shape[1], columns.shape[2:]
    x = columns.detach().to("cpu", torch.float64).reshape(n, k, -1)
    weights = resample_weights(n, n_boot, seed)
    lows, highs = [], []
    for lo in range(0, x.shape[2], COLUMNS_PER_PRODUCT):
        chunk = x[:, :, lo : lo + COLUMNS_PER_PRODUCT]
        point = statistic(*chunk.mean(0).unbind(-2))  # [c]
        boot = statistic(*(weights @ chunk.reshape(n, -1)).reshape(n_boot, k, -1).unbind(-2))  # [n_boot, c]
        jack = statistic(*((chunk.sum(0) - chunk) / (n - 1)).unbind(-2))  # [n, c]
        low, high = _bca_ends(point, boot, jack, level)
        lows.append(low)
        highs.append(high)
    return torch.cat(lows).reshape(rest).float(), torch.cat(highs).reshape(rest).float()


def cluster_sums(values: Float[Tensor, "m k"], cluster: Tensor) -> Float[Tensor, "c k"]:
    """Per-cluster sums of ``values`` (one row per cluster that occurs, in sorted order of ``cluster``).

    Predictions of one sequence are not independent: a bootstrap over sequences resamples these
    sums, and a ratio of means over predictions is the same ratio of the sums.

    Example:
        >>> cluster_sums(torch.tensor([[1.0], [2.0], [5.0]]), torch.tensor([3, 3, 7])).tolist()
        [[3.0], [5.0]]
    """
    ids, inverse = torch.unique(cluster, return_inverse=True)
    out = torch.zeros(len(ids), values.shape[1], dtype=values.dtype)
    return out.index_add_(0, inverse.cpu(), values.cpu())


def faithfulness(kept: Tensor, nothing: Tensor, full: Tensor) -> Tensor:
    """(kept - nothing) / (full - nothing), elementwise: the share of a behaviour restored (a statistic for :func:`bca`).

    Example:
        >>> float(faithfulness(torch.tensor(3.0), torch.tensor(1.0), torch.tensor(5.0)))
        0.5
    """
    return (kept - nothing) / (full - nothing)


def _bca_ends(point: Tensor, boot: Tensor, jack: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """The BCa ends from the point estimate ``[c]``, the resamples ``[n_boot, c]`` and the jackknife ``[n, c]``."""
    n_boot = boot.shape[0]
    below = ((boot < point).double().sum(0) + 0.5 * (boot == point).double().sum(0)) / n_boot
    z0 = torch.special.ndtri(below.clamp(1 / (n_boot + 1), n_boot / (n_boot + 1)))
    dev = jack.mean(0) - jack
    spread = (dev**2).sum(0)
    accel = torch.where(spread > 0, (dev**3).sum(0) / (6 * spread.clamp_min(1e-300) ** 1.5), torch.zeros_like(spread))
    ends = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        z = z0 + torch.special.ndtri(torch.tensor(q, dtype=torch.float64))
        adjusted = torch.special.ndtr(z0 + z / (1 - accel * z))
        ends.append(_quantile_per_column(boot, adjusted))
    low, high = ends
    flat = boot.amax(0) == boot.amin(0)  # no resample moves it: the interval is the point
    return torch.where(flat, point, low), torch.where(flat, point, high)


def _quantile_per_column(boot: Tensor, q: Tensor) -> Tensor:
    """The ``q[c]`` quantile of column ``c`` of ``boot`` (linear interpolation; NaN resamples sort last)."""
    ordered = boot.sort(0).values
    pos = q.nan_to_num(0.5).clamp(0, 1) * (boot.shape[0] - 1)
    below = pos.floor().long()
    above = pos.ceil().long()
    frac = pos - below
    lo = ordered.gather(0, below[None])[0]
    hi = ordered.gather(0, above[None])[0]
    return lo + frac * (hi - lo)


def p_values(per_example: Float[Tensor, " n *rest"], min_effect: float = 0.0) -> Float[Tensor, " *rest"]:
    """t-test p-values that each component's mean per-example effect is larger in size than ``min_effect``.

    With ``min_effect=0`` the two-sided one-sample t-test against zero. Above it, the null is
    ``|mean| <= min_effect``, tested by one-sided t-tests against ``+min_effect`` and ``-min_effect``
    (the smaller p-value, doubled for the two directions): a component is found only if its effect is
    both consistent over the prompts and at least that large. A component whose effect is the same on
    every prompt gets p = 0 when its size exceeds ``min_effect``, else 1; one not scored (NaN) gets NaN.

    Example:
        >>> x = torch.stack([torch.linspace(0.9, 1.1, 32), torch.linspace(-0.1, 0.1, 32)], 1)
        >>> p = p_values(x)
        >>> bool(p[0] < 1e-6), bool(p[1] > 0.5)
        (True, True)
        >>> bool(p_values(x, min_effect=2.0)[0] > 0.5)
        True
    """
    from scipy import stats as sp

    if per_example.shape[0] < 2:
        raise TLSubmodelsError(f"a test over prompts needs at least 2 prompts, got {per_example.shape[0]}")
    if not min_effect >= 0:
        raise TLSubmodelsError(f"min_effect is a size of effect, >= 0; got {min_effect!r}")
    x = per_example.detach().to("cpu", torch.float64).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        if min_effect == 0:
            p = sp.ttest_1samp(x, 0.0, axis=0).pvalue
        else:
            up = sp.ttest_1samp(x, min_effect, axis=0, alternative="greater").pvalue
            down = sp.ttest_1samp(x, -min_effect, axis=0, alternative="less").pvalue
            p = np.minimum(1.0, 2 * np.minimum(up, down))
    constant = np.ptp(x, axis=0) == 0
    p = np.where(constant, np.where(np.abs(x[0]) > min_effect, 0.0, 1.0), p)
    p = np.where(np.isnan(x).any(0), np.nan, p)
    return torch.as_tensor(np.asarray(p, dtype=np.float64)).float()


def reject(p: Float[Tensor, " m"], alpha: float) -> Tensor:
    """Which of the p-values ``p`` (NaN: not tested) the Benjamini-Hochberg procedure rejects at false-discovery
    rate ``alpha``.

    Example:
        >>> reject(torch.tensor([0.001, 0.02, 0.5, float("nan")]), 0.05).tolist()
        [True, True, False, False]
    """
    from scipy import stats as sp

    check_alpha(alpha)
    tested = ~torch.isnan(p)
    out = torch.zeros_like(p, dtype=torch.bool)
    if tested.any():
        adjusted = sp.false_discovery_control(p[tested].double().numpy(), method="bh")
        out[tested] = torch.as_tensor(adjusted <= alpha)
    return out
