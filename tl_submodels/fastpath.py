"""A forward pass over TL-layout weights that skips the work patching cannot change.

Patching one component in layer ``l`` leaves every earlier layer, and every position before the
first clean/corrupt difference, exactly as in the unpatched run (attention is causal). This module
runs a standard pre-norm transformer from layer ``l`` on the positions from that difference on,
reusing the cached keys and values of the shared prefix, and in the last layer computes queries,
MLP and unembedding only at the positions the metric reads. Many patched copies of the batch run
in one call; a callback edits the activations of each site (``hook_z``, ``mlp.hook_post``,
``hook_mlp_out``) as TransformerLens hooks would.

patching.py checks the logits of this path against the model's own forward on every call and
falls back to hooks when they differ.
"""

from __future__ import annotations

from collections.abc import Callable

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tl_submodels.components import Kind
from tl_submodels.model import StandardWeights

# (layer, kind, activation [rows, pos, ...], absolute positions [rows, pos]) -> activation
PatchFn = Callable[[int, Kind, Tensor, Tensor], Tensor]


def _norm(x: Tensor, params: tuple[Tensor | None, Tensor | None], kind: str | None, eps: float) -> Tensor:
    if kind is None:
        return x
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


class PrefixRunner:
    """Runs ``copies`` patched copies of a batch from a layer on, over the suffix positions.

    Args:
        weights: the model's weights in TL layout.
        prefix_k, prefix_v: per layer, the cached keys/values of positions ``[0, start)``,
            ``[batch, start, head_index, d_head]`` (shared by every copy).
        start: the first position that differs between the two runs.
        seq_len: the full sequence length.
        out_pos: the position the metric reads, per example ``[batch]``.
    """

    def __init__(
        self,
        weights: StandardWeights,
        prefix_k: list[Float[Tensor, "batch prefix head_index d_head"]],
        prefix_v: list[Float[Tensor, "batch prefix head_index d_head"]],
        start: int,
        seq_len: int,
        out_pos: Int[Tensor, " batch"],
    ) -> None:
        self.w = weights
        self.prefix_k, self.prefix_v = prefix_k, prefix_v
        self.start, self.seq_len = start, seq_len
        self.out_pos = out_pos
        self.n_layers = weights.W_Q.shape[0]

    def run(
        self,
        resid: Float[Tensor, "rows suffix d_model"],
        layer: int,
        patch: PatchFn | None = None,
    ) -> Float[Tensor, "rows d_vocab"]:
        """Final-position logits of every row, starting at ``layer`` from the suffix residual.

        Rows are ``copies x batch``, copy-major (row ``c * batch + b`` is example ``b``).
        """
        w, d = self.w, self.start
        batch = self.out_pos.shape[0]
        rows, s, _ = resid.shape
        copies = rows // batch
        device = resid.device
        q_rel = (self.out_pos - d).to(device)  # [batch]
        suffix_pos = torch.arange(d, self.seq_len, device=device)
        x = resid
        for l in range(layer, self.n_layers):
            last = l == self.n_layers - 1
            h = _norm(x, w.ln1[l], w.normalization, w.eps)
            k = torch.einsum("npd,hde->nphe", h, w.W_K[l]) + w.b_K[l]
            v = torch.einsum("npd,hde->nphe", h, w.W_V[l]) + w.b_V[l]
            if last:  # queries, MLP and unembedding only where the metric reads
                h = self._gather(h, q_rel, copies)
                x = self._gather(x, q_rel, copies)
                pos = self.out_pos.to(device).repeat(copies)[:, None]
                allowed = torch.arange(s, device=device)[None, None, :] <= q_rel[:, None, None]
            else:
                pos = suffix_pos[None].expand(rows, s)
                allowed = torch.ones(s, s, dtype=torch.bool, device=device).tril()[None]
            q = torch.einsum("npd,hde->nphe", h, w.W_Q[l]) + w.b_Q[l]
            scale = w.attn_scale * (l + 1 if w.scale_by_layer else 1)
            z = self._attend(q, k, v, l, allowed, copies, scale)
            if patch is not None:
                z = patch(l, "heads", z, pos)
            x = x + torch.einsum("nphe,hed->npd", z, w.W_O[l]) + w.b_O[l]
            if w.W_in is not None:
                assert w.b_in is not None and w.W_out is not None and w.b_out is not None
                h2 = _norm(x, w.ln2[l], w.normalization, w.eps)
                post = _act(h2 @ w.W_in[l] + w.b_in[l], w.act_fn)
                if patch is not None:
                    post = patch(l, "neurons", post, pos)
                mlp_out = post @ w.W_out[l] + w.b_out[l]
                if patch is not None:
                    mlp_out = patch(l, "mlps", mlp_out, pos)
                x = x + mlp_out
        x = _norm(x[:, 0], w.ln_final, w.normalization, w.eps)
        return x @ w.W_U + w.b_U

    @staticmethod
    def _gather(t: Tensor, q_rel: Tensor, copies: int) -> Tensor:
        """Row n keeps only its metric position: [rows, pos, ...] -> [rows, 1, ...]."""
        idx = q_rel.repeat(copies)
        return t[torch.arange(t.shape[0], device=t.device), idx][:, None]

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, layer: int, allowed: Tensor, copies: int, scale: float
    ) -> Tensor:
        q5, k5, v5 = (einops.rearrange(t, "(c b) p h e -> c b p h e", c=copies) for t in (q, k, v))
        scores = torch.einsum("cbqhe,cbkhe->cbhqk", q5, k5) / scale
        scores = scores.masked_fill(~allowed[None, :, None], float("-inf"))
        if self.start > 0:
            kp, vp = self.prefix_k[layer], self.prefix_v[layer]
            pre = torch.einsum("cbqhe,bkhe->cbhqk", q5, kp) / scale
            pattern = torch.cat([pre, scores], dim=-1).softmax(-1)
            z = torch.einsum("cbhqk,bkhe->cbqhe", pattern[..., : self.start], vp)
            z = z + torch.einsum("cbhqk,cbkhe->cbqhe", pattern[..., self.start :], v5)
        else:
            z = torch.einsum("cbhqk,cbkhe->cbqhe", scores.softmax(-1), v5)
        return einops.rearrange(z, "c b p h e -> (c b) p h e")
