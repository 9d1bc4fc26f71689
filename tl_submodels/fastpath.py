"""A forward pass over TL-layout weights that skips the work patching cannot change.

Patching one component in layer ``l`` leaves every earlier layer, and every position before the
first clean/corrupt difference, exactly as in the unpatched run (attention is causal); and it
changes the residual stream by an amount known without running the patched layer: a head's
``(z_new - z) @ W_O[h]``, a neuron's ``(post_new - post) * W_out[n]``, an MLP's output difference
(through the norm on the output where there is one, Gemma 2).
This module continues a pre-norm transformer from that point (after the patched layer's attention
or MLP; after the whole layer where attention and MLP run in parallel): learned or rotary positions,
LayerNorm or RMS norm, plain or gated MLPs, grouped key-value heads, norms after attention and MLP,
soft caps and sliding windows, as :class:`~tl_submodels.model.adapter.StandardWeights` describes;
on the positions from the first difference on, reusing the cached keys and values of the shared
prefix, and in the last layer computes queries, MLP and unembedding only at the positions the
metric reads (one per example, or several). Many patched copies of the batch run
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


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, adjacent: bool) -> Tensor:
    """Rotary positions on ``x`` ``[rows, pos, heads, d_head]`` with tables ``[rows or 1, pos, rotary_dim]``: the
    first ``rotary_dim`` dimensions turn in pairs (the two halves, or adjacent pairs), the rest pass through."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    if adjacent:
        flip = torch.stack([-rot[..., 1::2], rot[..., ::2]], dim=-1).flatten(-2)
    else:
        flip = torch.cat([-rot[..., r // 2 :], rot[..., : r // 2]], dim=-1)
    turned = rot * cos[:, :, None] + flip * sin[:, :, None]
    return torch.cat([turned, rest], dim=-1) if rest.shape[-1] else turned


def _allowed(q_at: Tensor, keys: Tensor, window: int | None) -> Tensor:
    """Which keys (absolute positions ``[nk]``) each query (``[batch or 1, nq]``) sees: causal, within the window."""
    ok = keys[None, None, :] <= q_at[:, :, None]
    if window is not None:
        ok = ok & (q_at[:, :, None] - keys[None, None, :] < window)
    return ok


def _soft_cap(x: Tensor, cap: float) -> Tensor:
    return cap * torch.tanh(x / cap) if cap > 0 else x


class PrefixRunner:
    """Runs ``copies`` patched copies of a batch from a layer on, over the suffix positions.

    Args:
        weights: the model's weights in TL layout (:meth:`tl_submodels.model.Adapter.standard_weights`).
        prefix_k, prefix_v: per layer, the cached keys (before any rotary) and values of positions
            ``[0, start)``, ``[batch, start, kv_head, d_head]`` (shared by every copy).
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
        prefix_k: list[Float[Tensor, "batch prefix kv_head d_head"] | None],
        prefix_v: list[Float[Tensor, "batch prefix kv_head d_head"] | None],
        start: int,
        out_pos: Int[Tensor, " batch"] | Int[Tensor, "batch n"],
        prune_last: bool = True,
    ) -> None:
        self.w = weights
        self.start = start
        self.one_read = out_pos.ndim == 1  # [batch]: logits [rows, d_vocab]; [batch, n]: [rows, n, d_vocab]
        self.out_pos = out_pos[:, None] if self.one_read else out_pos  # [batch, n]
        self.prune_last = prune_last
        self.n_layers, self.n_heads, _, self.d_head = weights.W_Q.shape
        self.n_kv = weights.W_K.shape[1]
        self.parallel = weights.parallel
        # 2-D weights for single matrix products: [d_model, (heads + 2 kv_heads) * d_head] for q, k, v.
        self.W_QKV = [
            torch.cat([einops.rearrange(w[l], "h d e -> d (h e)") for w in (weights.W_Q, weights.W_K, weights.W_V)], 1)
            for l in range(self.n_layers)
        ]
        self.b_QKV = [
            torch.cat([b[l].flatten() for b in (weights.b_Q, weights.b_K, weights.b_V)]) for l in range(self.n_layers)
        ]
        self.W_O2 = [einops.rearrange(weights.W_O[l], "h e d -> (h e) d") for l in range(self.n_layers)]
        # gated MLPs: the gate and the input in one product, [d_model, 2 * d_mlp]
        self.W_GI = None
        if weights.W_gate is not None and weights.W_in is not None and weights.b_in is not None:
            self.W_GI = [torch.cat([weights.W_gate[l], weights.W_in[l]], 1) for l in range(self.n_layers)]
            self.b_GI = [torch.cat([torch.zeros_like(weights.b_in[l]), weights.b_in[l]]) for l in range(self.n_layers)]
        self.prefix_k = [self._rope(k, None, 0) if k is not None else None for k in prefix_k]
        self.prefix_v = prefix_v

    def _rope(self, x: Tensor, pos: Tensor | None, first: int) -> Tensor:
        """``x`` ``[rows, p, heads, d_head]`` turned to its positions: ``first .. first + p - 1`` for every row, or
        ``pos`` ``[batch, p]`` (rows copy-major over the batch)."""
        cos, sin = self.w.rotary_cos, self.w.rotary_sin
        if cos is None or sin is None:
            return x
        if pos is None:
            c, s = cos[None, first : first + x.shape[1]], sin[None, first : first + x.shape[1]]
        else:
            idx = pos.to(cos.device).repeat(x.shape[0] // pos.shape[0], 1)
            c, s = cos[idx], sin[idx]
        return _rotate(x, c.to(x.dtype), s.to(x.dtype), self.w.rotary_adjacent)

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
        entry (``"pre"``), after its attention (``"attn"``; not in parallel blocks, where the MLP reads
        the block's entry) or after its MLP (``"mlp"``). Rows are ``copies x batch``, copy-major (row
        ``c * batch + b`` is example ``b``). ``ablate``: per layer, units set to fixed values in every
        row, from ``layer`` on (an ablated run). ``capture``: filled with the residual stream at each
        layer's entry (``(l, "pre")``) and after its attention (``(l, "attn")``, not in parallel blocks)
        from ``resid`` on; with ``prune_last`` the last layer's ``"attn"`` holds the read positions
        only, ``[rows, n, d_model]``: pass it back with ``read_only=True``.
        """
        if after == "attn" and self.parallel:
            raise ValueError("parallel blocks have no residual stream between attention and MLP: start at 'pre'")
        w, d = self.w, self.start
        batch = self.out_pos.shape[0]
        rows, s, _ = resid.shape
        copies = rows // batch
        device = resid.device
        q_abs = self.out_pos.to(device)  # [batch, n]: the read positions
        q_rel = q_abs - d
        x = resid
        first = layer if after == "pre" else layer + 1
        gathered = read_only  # whether x holds only the read positions yet
        if after == "attn" and layer == self.n_layers - 1 and self.prune_last and not gathered:
            x, gathered = self._gather(x, q_rel, copies), True
        ablate = ablate or {}
        if after == "attn":
            x = x + self._mlp(x, layer, ablate.get(layer))
        he, kve = self.n_heads * self.d_head, self.n_kv * self.d_head
        suffix = torch.arange(d, d + s, device=device)
        for l in range(first, self.n_layers):
            if capture is not None:
                capture[(l, "pre")] = x
            abl = ablate.get(l)
            h = _norm(x, w.ln1[l], w.normalization, w.eps)
            last = l == self.n_layers - 1 and self.prune_last
            if last:  # queries, MLP, unembedding only where the metric reads
                kv = _linear(h, self.W_QKV[l][:, he:], self.b_QKV[l][he:])
                k, v = kv[..., :kve], kv[..., kve:]
                h = self._gather(h, q_rel, copies)
                x, gathered = self._gather(x, q_rel, copies), True
                q = _linear(h, self.W_QKV[l][:, :he], self.b_QKV[l][:he])
                q_at = q_abs  # [batch, n]
            else:
                q, k, v = _linear(h, self.W_QKV[l], self.b_QKV[l]).split([he, kve, kve], dim=-1)
                q_at = suffix[None]  # [1, s]
            q = q.unflatten(-1, (self.n_heads, self.d_head))
            k, v = (t.unflatten(-1, (self.n_kv, self.d_head)) for t in (k, v))
            q = self._rope(q, q_abs if last else None, d)
            k = self._rope(k, None, d)
            scale = w.attn_scale * (l + 1 if w.scale_by_layer else 1)
            z = self._attend(q, k, v, l, q_at, suffix, copies, scale)
            if abl is not None and abl.heads is not None:
                z[:, :, abl.heads] = abl.head_values if abl.head_values is not None else 0.0
            attn_out = _linear(z.flatten(-2), self.W_O2[l], w.b_O[l])
            if w.ln1_post is not None:
                attn_out = _norm(attn_out, w.ln1_post[l], w.normalization, w.eps)
            if self.parallel:  # the MLP reads the block's entry too
                x = x + attn_out + self._mlp(x, l, abl)
                continue
            x = x + attn_out
            if capture is not None:
                capture[(l, "attn")] = x
            x = x + self._mlp(x, l, abl)
        if not gathered:  # started after the last layer's MLP, or prune_last is off
            x = self._gather(x, q_rel, copies)
        x = _norm(x[:, 0] if self.one_read else x, w.ln_final, w.normalization, w.eps)
        return _soft_cap(x @ w.W_U + w.b_U, w.logit_soft_cap)

    def _mlp(self, x: Tensor, layer: int, ablate: LayerAblation | None = None) -> Tensor:
        """What the layer's MLP adds to the residual stream ``x`` (its output, after any norm on it)."""
        w = self.w
        if w.W_in is None or w.b_in is None or w.W_out is None or w.b_out is None:
            return torch.zeros_like(x)
        if ablate is not None and ablate.mlp_value is not None:  # the whole MLP's output replaced
            return ablate.mlp_value.expand_as(x)
        h = _norm(x, w.ln2[layer], w.normalization, w.eps)
        if self.W_GI is not None:
            gate, pre = _linear(h, self.W_GI[layer], self.b_GI[layer]).chunk(2, dim=-1)
            post = _act(gate, w.act_fn) * pre
        else:
            post = _act(_linear(h, w.W_in[layer], w.b_in[layer]), w.act_fn)
        if ablate is not None and ablate.neurons is not None:
            post[..., ablate.neurons] = ablate.neuron_values if ablate.neuron_values is not None else 0.0
        out = _linear(post, w.W_out[layer], w.b_out[layer])
        return out if w.ln2_post is None else _norm(out, w.ln2_post[layer], w.normalization, w.eps)

    def post_attn(self, layer: int, raw: Tensor) -> Tensor:
        """What the attention adds to the residual stream given its raw output ``raw`` (sum of heads + b_O)."""
        w = self.w
        return raw if w.ln1_post is None else _norm(raw, w.ln1_post[layer], w.normalization, w.eps)

    def post_mlp(self, layer: int, raw: Tensor) -> Tensor:
        """What the MLP adds to the residual stream given its raw output ``raw``."""
        w = self.w
        return raw if w.ln2_post is None else _norm(raw, w.ln2_post[layer], w.normalization, w.eps)

    @staticmethod
    def _gather(t: Tensor, q_rel: Tensor, copies: int) -> Tensor:
        """Each row keeps only its ``n`` read positions: [rows, pos, ...] -> [rows, n, ...]."""
        idx = q_rel.repeat(copies, 1)
        return t[torch.arange(t.shape[0], device=t.device)[:, None], idx]

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, layer: int, q_at: Tensor, suffix: Tensor, copies: int, scale: float
    ) -> Tensor:
        """Attention of queries at absolute positions ``q_at`` (``[batch or 1, nq]``) over the prefix's keys and the
        suffix's (at ``suffix``); query heads grouped over their key-value head."""
        g = self.n_heads // self.n_kv
        # [c, b, p, kv_head, group, d_head]: the query heads that share a key-value head (one each without GQA)
        q6 = einops.rearrange(q, "(c b) p (j g) e -> c b p j g e", c=copies, g=g)
        k5, v5 = (einops.rearrange(t, "(c b) p j e -> c b p j e", c=copies) for t in (k, v))
        if g == 1:  # plain multi-head attention: the cheaper products without the group axis
            q6 = q6.squeeze(-2)
        cap, window = self.w.attn_soft_cap, (self.w.windows[layer] if self.w.windows else None)
        qk, pv = (
            ("cbqje,cbkje->cbjqk", "cbjqk,cbkje->cbqje") if g == 1 else ("cbqjge,cbkje->cbjgqk", "cbjgqk,cbkje->cbqjge")
        )
        mask = _allowed(q_at, suffix, window)[None, :, None]  # [1, batch or 1, 1, nq, nk]
        if g > 1:
            mask = mask[:, :, :, None]
        scores = _soft_cap(torch.einsum(qk, q6, k5) / scale, cap).masked_fill(~mask, float("-inf"))
        if self.start > 0:
            kp, vp = self.prefix_k[layer], self.prefix_v[layer]
            assert kp is not None and vp is not None, "a prefix needs its cached keys and values"
            # the prefix's keys and values are shared by every copy: no copy axis
            pre = _soft_cap(torch.einsum(qk.replace(",cbkje", ",bkje"), q6, kp) / scale, cap)
            if window is not None:  # a sliding window can hide prefix keys (without one, all are earlier: seen)
                pmask = _allowed(q_at, torch.arange(self.start, device=q.device), window)[None, :, None]
                pre = pre.masked_fill(~(pmask if g == 1 else pmask[:, :, :, None]), float("-inf"))
            pattern = torch.cat([pre, scores], dim=-1).softmax(-1)
            z = torch.einsum(pv.replace(",cbkje", ",bkje"), pattern[..., : self.start], vp)
            z = z + torch.einsum(pv, pattern[..., self.start :], v5)
        else:
            z = torch.einsum(pv, scores.softmax(-1), v5)
        if g == 1:
            z = z.unsqueeze(-2)
        return einops.rearrange(z, "c b p j g e -> (c b) p (j g) e")
