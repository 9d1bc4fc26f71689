"""A forward pass over TL-layout weights that skips the work patching cannot change.

Patching one component in layer ``l`` leaves every earlier layer, and every position before the
first clean/corrupt difference, exactly as in the unpatched run (attention is causal); and it
changes the residual stream by an amount known without running the patched layer: a head's
``(z_new - z) @ W_O[h]``, a neuron's ``(post_new - post) * W_out[n]``, an MLP's output difference.
This module continues a standard pre-norm transformer from that point (after the patched layer's
attention or MLP), on the positions from the first difference on, reusing the cached keys and
values of the shared prefix, and in the last layer computes queries, MLP and unembedding only at
the positions the metric reads (one per example, or several). Many patched copies of the batch run
in one call.

patching.py checks the logits of this path against the model's own forward on every call and
falls back to hooks when they differ.

The weights it runs on, and whether a model is one it can run, come from the model's adapter
(:meth:`tl_submodels.model.Adapter.standard_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tl_submodels.model.adapter import StandardWeights

__all__ = ["LayerAblation", "PrefixRunner", "Stage"]

# Where in a layer a residual stream is taken: its entry, after attention, after the MLP.
Stage = Literal["pre", "attn", "mlp"]


@dataclass(frozen=True)
class LayerAblation:
    """What one layer's ablated units become in a weight-level forward (zero or all-position mean
    ablation: one value per unit, the same in every row and position).

    ``heads`` index the layer's heads, their ``z`` set to ``head_values`` (``[n, d_head]``, or a
    0-d zero); ``neurons`` index its MLP neurons, their post-activation set to ``neuron_values``;
    ``mlp_value`` (``[d_model]``) replaces the whole MLP's output.
    """

    heads: Tensor | None = None
    head_values: Tensor | None = None
    neurons: Tensor | None = None
    neuron_values: Tensor | None = None
    mlp_value: Tensor | None = None


def _norm(x: Tensor, params: tuple[Tensor | None, Tensor | None], kind: str | None, eps: float) -> Tensor:
    if kind is None:
        return x
    if kind in ("LN", "LNPre"):  # TL's LayerNorm: biased variance, eps inside the square root
        return F.layer_norm(x, x.shape[-1:], params[0], params[1], eps)
    if kind.startswith("LN"):
        x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    w, b = params
    if w is not None:
        x = x * w
    if b is not None:
        x = x + b
    return x


def _act(x: Tensor, name: str | None) -> Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)
    if name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        return F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu(x)
    raise ValueError(f"unsupported act_fn {name!r}")


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight + bias`` as one fused matrix product over the flattened leading axes."""
    return torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], weight.shape[-1])


class PrefixRunner:
    """Runs ``copies`` patched copies of a batch from a layer on, over the suffix positions.

    Args:
        weights: the model's weights in TL layout.
        prefix_k, prefix_v: per layer, the cached keys/values of positions ``[0, start)``,
            ``[batch, start, head_index, d_head]`` (shared by every copy).
        start: the first position that differs between the two runs (at most the first read).
        out_pos: the position the metric reads, per example ``[batch]``; or the ``n`` positions it
            reads ``[batch, n]`` (every entry a valid position: a padded slot repeats a read).
        prune_last: compute the last layer's queries and MLP only at ``out_pos`` (off: benchmarks).

    Example:
        >>> runner = PrefixRunner(adapter(model).standard_weights(), ks, vs, start, task.out_pos)  # doctest: +SKIP
        >>> logits = runner.run(resid, layer=1, after="attn")  # doctest: +SKIP
        >>> logits.shape == (resid.shape[0], *task.out_pos.shape[1:], model.cfg.d_vocab)  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        weights: StandardWeights,
        prefix_k: list[Float[Tensor, "batch prefix head_index d_head"] | None],
        prefix_v: list[Float[Tensor, "batch prefix head_index d_head"] | None],
        start: int,
        out_pos: Int[Tensor, " batch"] | Int[Tensor, "batch n"],
        prune_last: bool = True,
    ) -> None:
        self.w = weights
        self.prefix_k, self.prefix_v = prefix_k, prefix_v
        self.start = start
        self.one_read = out_pos.ndim == 1  # [batch]: logits [rows, d_vocab]; [batch, n]: [rows, n, d_vocab]
        self.out_pos = out_pos[:, None] if self.one_read else out_pos  # [batch, n]
        self.prune_last = prune_last
        self.n_layers, self.n_heads, _, self.d_head = weights.W_Q.shape
        # 2-D weights for single matrix products: [d_model, 3 * heads * d_head] for q, k, v.
        self.W_QKV = [
            einops.rearrange(torch.stack([weights.W_Q[l], weights.W_K[l], weights.W_V[l]]), "t h d e -> d (t h e)")
            for l in range(self.n_layers)
        ]
        self.b_QKV = [
            torch.stack([weights.b_Q[l], weights.b_K[l], weights.b_V[l]]).flatten() for l in range(self.n_layers)
        ]
        self.W_O2 = [einops.rearrange(weights.W_O[l], "h e d -> (h e) d") for l in range(self.n_layers)]

    def run(
        self,
        resid: Float[Tensor, "rows suffix d_model"],
        layer: int,
        after: Stage = "pre",
        ablate: Mapping[int, LayerAblation] | None = None,
        *,
        capture: dict[tuple[int, Stage], Tensor] | None = None,
        read_only: bool = False,
    ) -> Float[Tensor, "rows d_vocab"] | Float[Tensor, "rows n d_vocab"]:
        """Logits at the read positions of every row, continuing the forward from ``resid``:
        ``[rows, d_vocab]`` for a ``[batch]`` ``out_pos``, ``[rows, n, d_vocab]`` for ``[batch, n]``.

        ``resid`` is the residual stream over the suffix positions at a point of ``layer``: its
        entry (``"pre"``), after its attention (``"attn"``) or after its MLP (``"mlp"``). Rows are
        ``copies x batch``, copy-major (row ``c * batch + b`` is example ``b``). ``ablate``: per
        layer, units set to fixed values in every row, from ``layer`` on (an ablated run).
        ``capture``: filled with the residual stream at each layer's entry (``(l, "pre")``) and after
        its attention (``(l, "attn")``) from ``resid`` on; with ``prune_last`` the last layer's
        ``"attn"`` holds the read positions only, ``[rows, n, d_model]``: pass it back with
        ``read_only=True``.
        """
        w, d = self.w, self.start
        batch = self.out_pos.shape[0]
        rows, s, _ = resid.shape
        copies = rows // batch
        device = resid.device
        q_rel = (self.out_pos - d).to(device)  # [batch, n]
        x = resid
        first = layer if after == "pre" else layer + 1
        gathered = read_only  # whether x holds only the read positions yet
        if after == "attn" and layer == self.n_layers - 1 and self.prune_last and not gathered:
            x, gathered = self._gather(x, q_rel, copies), True
        ablate = ablate or {}
        if after == "attn":
            x = self._mlp(x, layer, ablate.get(layer))
        he = self.n_heads * self.d_head
        for l in range(first, self.n_layers):
            if capture is not None:
                capture[(l, "pre")] = x
            h = _norm(x, w.ln1[l], w.normalization, w.eps)
            if l == self.n_layers - 1 and self.prune_last:  # queries, MLP, unembedding only where the metric reads
                kv = _linear(h, self.W_QKV[l][:, he:], self.b_QKV[l][he:])
                k, v = kv[..., :he], kv[..., he:]
                h = self._gather(h, q_rel, copies)
                x, gathered = self._gather(x, q_rel, copies), True
                q = _linear(h, self.W_QKV[l][:, :he], self.b_QKV[l][:he])
                allowed = torch.arange(s, device=device)[None, None, :] <= q_rel[:, :, None]  # [batch, n, s]
            else:
                q, k, v = _linear(h, self.W_QKV[l], self.b_QKV[l]).split(he, dim=-1)
                allowed = torch.ones(s, s, dtype=torch.bool, device=device).tril()[None]
            q, k, v = (t.unflatten(-1, (self.n_heads, self.d_head)) for t in (q, k, v))
            scale = w.attn_scale * (l + 1 if w.scale_by_layer else 1)
            z = self._attend(q, k, v, l, allowed, copies, scale)
            abl = ablate.get(l)
            if abl is not None and abl.heads is not None:
                z[:, :, abl.heads] = abl.head_values if abl.head_values is not None else 0.0
            x = x + _linear(z.flatten(-2), self.W_O2[l], w.b_O[l])
            if capture is not None:
                capture[(l, "attn")] = x
            x = self._mlp(x, l, abl)
        if not gathered:  # started after the last layer's MLP, or prune_last is off
            x = self._gather(x, q_rel, copies)
        x = _norm(x[:, 0] if self.one_read else x, w.ln_final, w.normalization, w.eps)
        return x @ w.W_U + w.b_U

    def _mlp(self, x: Tensor, layer: int, ablate: LayerAblation | None = None) -> Tensor:
        w = self.w
        if w.W_in is None or w.b_in is None or w.W_out is None or w.b_out is None:
            return x
        if ablate is not None and ablate.mlp_value is not None:  # the whole MLP's output replaced
            return x + ablate.mlp_value
        h = _norm(x, w.ln2[layer], w.normalization, w.eps)
        post = _act(_linear(h, w.W_in[layer], w.b_in[layer]), w.act_fn)
        if ablate is not None and ablate.neurons is not None:
            post[..., ablate.neurons] = ablate.neuron_values if ablate.neuron_values is not None else 0.0
        return x + _linear(post, w.W_out[layer], w.b_out[layer])

    @staticmethod
    def _gather(t: Tensor, q_rel: Tensor, copies: int) -> Tensor:
        """Each row keeps only its ``n`` read positions: [rows, pos, ...] -> [rows, n, ...]."""
        idx = q_rel.repeat(copies, 1)
        return t[torch.arange(t.shape[0], device=t.device)[:, None], idx]

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, layer: int, allowed: Tensor, copies: int, scale: float
    ) -> Tensor:
        q5, k5, v5 = (einops.rearrange(t, "(c b) p h e -> c b p h e", c=copies) for t in (q, k, v))
        scores = torch.einsum("cbqhe,cbkhe->cbhqk", q5, k5) / scale
        scores = scores.masked_fill(~allowed[None, :, None], float("-inf"))
        if self.start > 0:
            kp, vp = self.prefix_k[layer], self.prefix_v[layer]
            assert kp is not None and vp is not None, "a prefix needs its cached keys and values"
            pre = torch.einsum("cbqhe,bkhe->cbhqk", q5, kp) / scale
            pattern = torch.cat([pre, scores], dim=-1).softmax(-1)
            z = torch.einsum("cbhqk,bkhe->cbqhe", pattern[..., : self.start], vp)
            z = z + torch.einsum("cbhqk,cbkhe->cbqhe", pattern[..., self.start :], v5)
        else:
            z = torch.einsum("cbhqk,cbkhe->cbqhe", scores.softmax(-1), v5)
        return einops.rearrange(z, "c b p h e -> (c b) p h e")
