"""Edge attribution: how much of each component's output reaches each later component's input.

The residual stream is a sum, so the effect of writer ``u`` (a head's ``z @ W_O[h]``, an MLP's
output) on the metric splits over the readers of the residual after it: every later head's
q, k and v input, every later MLP's input, and the logits. Attribution patching scores each edge
with ``(a_u,source - a_u,base) . d metric / d input_v`` from one forward and backward, summed over
positions and averaged over examples (TransformerLens 4's ``attribution_patch`` edges, per
position). The edges out of a writer add up to its node score from :func:`tl_submodels.attribute`.

Reader granularity depends on the model: ``"qkv"`` (a reader per head and q/k/v input) where the
attention inputs can be split per head (TL 2 HookedTransformer, TL 4 bridges with joint-QKV
attention such as GPT-2), ``"layer"`` (one reader per attention layer) on TL 4 native bridges.

With grouped- or multi-query attention (Llama, Qwen2, Mistral, Gemma 2: fewer key-value heads than
query heads) each key-value head reads the residual once for every query head that shares it, so a
k or v reader is a key-value head: ``L{layer}KV{g}.k`` / ``.v``, shared by query heads
``g * r .. (g + 1) * r - 1`` where ``r = n_heads / n_key_value_heads``. Queries stay per head
(``L{layer}H{h}.q``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.attribution import site_gradients
from tl_submodels.scores import Direction, check_scoring, metric_gap, sides
from tl_submodels.summary import summary_html, summary_text
from tl_submodels.task import Task
from tl_submodels.values import Value

__all__ = ["Edges", "attribute_edges"]


@dataclass(frozen=True, kw_only=True)
class Edges(Value):
    """Edge scores from writers (``L1H3``, ``MLP2``) to readers (``L2H0.q``, ``L2.attn``, ``MLP2``, ``logits``).

    ``scores`` is normalised by the clean-corrupt gap (denoising: the share of the gap the edge
    restores), ``raw`` is in metric units; both are NaN where a writer cannot reach a reader.

    Example:
        >>> edges = tls.attribute_edges(model, task)  # doctest: +SKIP
        >>> edges.top(3)  # doctest: +SKIP
        [('L0H0', 'L1H2.k', 0.21), ...]
    """

    writers: list[str]
    readers: list[str]
    scores: Float[Tensor, "writer reader"]
    raw: Float[Tensor, "writer reader"]
    granularity: str
    clean_metric: float
    corrupt_metric: float
    direction: Direction
    task: str

    def top(self, k: int = 10) -> list[tuple[str, str, float]]:
        """The ``k`` edges with the largest absolute score; unreachable edges (NaN: a reader before its
        writer) are left out."""
        flat = self.scores.flatten()
        scored = (~flat.isnan()).nonzero()[:, 0]
        order = scored[flat[scored].abs().argsort(descending=True)[:k]].tolist()
        n = len(self.readers)
        return [(self.writers[i // n], self.readers[i % n], float(flat[i])) for i in order]

    def _summary(self) -> tuple[str, list[tuple[str, str]]]:
        reachable = int((~self.scores.isnan()).sum())
        return (
            f"Edges on {self.task} ({self.direction}, {self.granularity}): {len(self.writers)} writers x "
            f"{len(self.readers)} readers, {reachable} reachable",
            [("top", ", ".join(f"{w}->{r} {v:+.2f}" for w, r, v in self.top(5))), ("all", ".to_frame()")],
        )

    def __repr__(self) -> str:
        return summary_text(*self._summary())

    def _repr_html_(self) -> str:
        return summary_html(*self._summary())

    def to_frame(self) -> Any:
        """A pandas DataFrame with one row per edge: writer, reader, score, raw."""
        import pandas as pd

        rows = [
            {"writer": w, "reader": r, "score": float(self.scores[i, j]), "raw": float(self.raw[i, j])}
            for i, w in enumerate(self.writers)
            for j, r in enumerate(self.readers)
            if not torch.isnan(self.scores[i, j])
        ]
        return pd.DataFrame(rows)


def attribute_edges(model: Any, task: Task, *, direction: Direction = "denoising") -> Edges:
    """Attribution-patching scores of every edge between components, heads and MLPs to the logits.

    Args:
        model: a TransformerLens model in eval mode (flags it needs are set and restored).
        task: the clean/corrupt prompts and metric.
        direction: ``"denoising"`` (gradients at the corrupt run) or ``"noising"``.

    Returns:
        Edges, with the reader granularity the model supports.

    Raises:
        TLSubmodelsError: a model whose attention inputs cannot be read, a metric without a gap.

    Example:
        >>> model = tls.zoo.load("induction-2l")
        >>> edges = tls.attribute_edges(model, tls.zoo.task("induction-2l", "induction", n=8))
        >>> edges.granularity in ("qkv", "layer")
        True
    """
    info, _, task = check_scoring(model, task, None, False, direction)
    side = sides(task, direction)
    base_tokens, source_tokens = side.base, side.source
    L, has_mlps = info.n_layers, info.has_mlps
    outputs = [tlmodel.hook_z(layer) for layer in range(L)] + (
        [tlmodel.hook_mlp_out(layer) for layer in range(L)] if has_mlps else []
    )
    both_logits, both = tlmodel.run_cache(model, torch.cat([source_tokens, base_tokens]), outputs)
    b = task.batch
    source_value, base_value = float(task.metric(both_logits[:b])), float(task.metric(both_logits[b:]))
    clean_value, corrupt_value = side.clean_corrupt(base_value, source_value)
    gap = metric_gap(task, clean_value, corrupt_value)

    # Writers: what each component adds to the residual stream, source minus base: [writer, b, s, d].
    ad = tlmodel.adapter(model)
    W_O = ad.W_O()
    writers: list[str] = []
    deltas: list[Tensor] = []
    writer_layer: list[float] = []  # heads write at layer l, MLPs after the attention of l (l + 0.5)
    for layer in range(L):
        dz = both[tlmodel.hook_z(layer)][:b] - both[tlmodel.hook_z(layer)][b:]
        deltas.append(torch.einsum("bshe,hed->hbsd", dz, W_O[layer].to(dz.device)))
        writers += [f"L{layer}H{h}" for h in range(info.n_heads)]
        writer_layer += [layer] * info.n_heads
        if has_mlps:
            name = tlmodel.hook_mlp_out(layer)
            deltas.append((both[name][:b] - both[name][b:])[None])
            writers.append(f"MLP{layer}")
            writer_layer.append(layer + 0.5)
    delta = torch.cat(deltas)

    # Readers: the gradient of the metric at what each component reads.
    with ad.reader_hooks() as granularity:
        sites: list[tuple[str, str, float]] = []  # (hook point, reader name or "L{layer}{H|KV}{i}.{q|k|v}", layer)
        for layer in range(L):
            if granularity == "qkv":
                sites += [(tlmodel.hook_split_input(layer, w), w, layer) for w in "qkv"]
            else:
                sites.append((tlmodel.hook_attn_reads(layer), f"L{layer}.attn", layer))
            if has_mlps:
                # an MLP reads the residual after its layer's attention, or beside it in a parallel block
                sites.append((tlmodel.hook_mlp_in(layer), f"MLP{layer}", layer + (0.0 if ad.parallel_blocks else 0.5)))
        sites.append((tlmodel.hook_resid_post(L - 1), "logits", L + 1))
        grads = site_gradients(model, task, torch.arange(b), base_tokens, dict.fromkeys(n for n, _, _ in sites))
    readers: list[str] = []
    reader_layer: list[float] = []
    per_reader = []
    for name, what, at in sites:
        g = grads[name]  # [b, s, d] or [b, s, head, d]: k and v have one head per key-value head (GQA)
        if g.ndim == 4:
            unit = "H" if g.shape[2] == info.n_heads else "KV"
            readers += [f"L{int(at)}{unit}{i}.{what}" for i in range(g.shape[2])]
            reader_layer += [at] * g.shape[2]
        else:
            readers.append(what)
            reader_layer.append(at)
        per_reader.append(g.permute(2, 0, 1, 3) if g.ndim == 4 else g[None])
    grad = torch.cat(per_reader)  # [reader, b, s, d]
    raw = torch.einsum("wbsd,rbsd->wr", delta, grad.to(delta.device)).cpu()
    reachable = torch.tensor(writer_layer)[:, None] < torch.tensor(reader_layer)[None, :]
    raw = torch.where(reachable, raw, torch.full_like(raw, float("nan")))
    sign = side.sign
    return Edges(
        writers=writers,
        readers=readers,
        scores=sign * raw / gap,
        raw=raw,
        granularity=granularity,
        clean_metric=clean_value,
        corrupt_metric=corrupt_value,
        direction=direction,
        task=task.name,
    )
