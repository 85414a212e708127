"""Layers that apply a different adapter to every row: wrappers installed once over the base model.

Each wrapper keeps the adapters that target its module in device pools indexed by the model-wide slot of
the adapter (kernels/pool.py), and reads the running batch's per-row slots from the shared `RowContext`.
With no context, or no row whose adapter touches the module, a wrapper is exactly its base layer.

Math per row whose adapter is loaded here (x: the layer input, W: the (out, in) weight, b: the bias):
    LoRA:       y = W x + scale · B A x + b
    DoRA:       y = g ⊙ (W x + scale · B A x) + b,   g = m / ||W + scale·B A||_row   (constant: W is frozen)
    IA3 (out):  y = (W x + b) ⊙ l            IA3 (feed-forward, input side):  y = W (x ⊙ l) + b
    bias="all"/"lora_only": b is that adapter's trained bias (kept as a per-slot delta to the base bias)
    modules_to_save (heads): the adapter's own copy of the module (any output width)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from kernels import IA3Pool, LoraPool, ia3_scale_input, ia3_scale_output, lora_apply, resolve_backend
from kernels.variants import LoraGeometry

from ..attr_forwarding import ForwardingModule
from .context import ContextHolder, RowContext
from .fused import SiblingGroup
from .parsed import LoraTensors


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def weight_rows(module: Any) -> torch.Tensor:
    """The base weight in (out, in) layout (GPT-2's Conv1D stores (in, out))."""
    return module.weight.T if is_conv1d(module) else module.weight


def _pad_labels(t: torch.Tensor, dim: int, width: int) -> torch.Tensor:
    """`t` padded with -inf to `width` along `dim` (< 0, counted from the end: a head's label dim)."""
    missing = width - t.shape[dim]
    if not missing:
        return t
    return F.pad(t, (0, 0) * (-1 - dim) + (0, missing), value=float("-inf"))


def linear_modules(base_model: nn.Module) -> dict[str, nn.Module]:
    """Every `nn.Linear` / GPT-2 `Conv1D` of the base by path: the modules that get a LoRA pool when targeted."""
    return {p: m for p, m in base_model.named_modules() if p and (isinstance(m, nn.Linear) or is_conv1d(m))}


def output_embedding_paths(base_model: nn.Module) -> frozenset[str]:
    """Paths of the base's output embedding (a causal LM's `lm_head`), which the LoRA budget is not split over."""
    get = getattr(base_model, "get_output_embeddings", None)
    try:
        head = get() if callable(get) else None
    except NotImplementedError:
        head = None
    if head is None:
        return frozenset()
    return frozenset(p for p, m in base_model.named_modules() if p and m is head)


def lora_split_width(base_model: nn.Module) -> int:
    """Sum of `in + out` over the linear modules the LoRA budget is split over (all but the output embedding):
    one rank unit of an adapter on all of them takes this many elements."""
    outside = output_embedding_paths(base_model)
    return sum(
        int(weight_rows(m).shape[0] + weight_rows(m).shape[1])
        for p, m in linear_modules(base_model).items()
        if p not in outside
    )


class PoolBudget:
    """How many bytes one module's pools may take: the model-wide budget split in proportion to the
    module's `in + out` (an adapter of rank r costs r·(in+out) elements in every module it targets) over the
    modules of the split, `total_width` wide. The output embedding (`lm_head`: vocab + hidden wide, rarely
    targeted) is left out of the split, so it takes no share of every adapter's room; its pool, made only
    when an adapter targets it, gets the share it would have had in the split, on top of the budget."""

    def __init__(
        self,
        total_bytes: int,
        total_width: int,
        num_slots: int,
        rank_capacity: int,
        outside: frozenset[str] = frozenset(),
    ) -> None:
        self.total_bytes, self.total_width = total_bytes, max(total_width, 1)
        self.num_slots, self.rank_capacity = num_slots, rank_capacity
        self.outside = outside

    def lora_bytes(self, path: str, in_features: int, out_features: int) -> int:
        tables = self.num_slots * (self.rank_capacity + 3) * 8
        width = in_features + out_features
        split = self.total_width + (width if path in self.outside else 0)
        return tables + self.total_bytes * width // split

    def vector_bytes(self, features: int, dtype: torch.dtype) -> int:
        return self.num_slots * 8 + self.num_slots * features * torch.finfo(dtype).bits // 8


class _MultiBase(ForwardingModule):
    """Shared bookkeeping: which slots touch this module, and per-slot full overrides (heads, biases)."""

    # Model code reads its layers' attributes (T5: `self.wo.weight.dtype`)
    _forward_to: ClassVar[str] = "base_layer"

    base_layer: Any  # nn.Linear, Conv1D, nn.Embedding or any module an adapter overrides

    def __init__(self, base_layer: nn.Module, path: str, holder: ContextHolder) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.path = path
        self._holder = [holder]  # a list keeps the holder out of nn.Module's child registry
        self.slots: set[int] = set()
        self.overrides: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def context(self) -> RowContext | None:
        ctx = self._holder[0].current
        if ctx is None or not self.slots or self.slots.isdisjoint(ctx.slot_set):
            return None
        return ctx

    def set_override(self, slot: int, params: dict[str, torch.Tensor]) -> None:
        ref = next(iter(self.base_layer.parameters()))
        self.overrides[slot] = {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in params.items()}
        self.slots.add(slot)

    def _apply_overrides(self, x: torch.Tensor, y: torch.Tensor, ctx: RowContext, *args: Any) -> torch.Tensor:
        """Rows whose adapter carries its own copy of this module run that copy; widths may differ
        (classification heads with other label counts): narrower rows are padded with -inf along the label
        dim (the last; the channels of a convolution's (B, C, h, w): segmentation heads)."""
        tokens = x.shape[1] if x.dim() > 1 else x.shape[0]
        groups = {s: i for s, i in ctx.index_groups(tokens, x.device).items() if s in self.overrides}
        if not groups:
            return y
        outs = {
            s: functional_call(self.base_layer, self.overrides[s], (x[rows], *args))
            for s, rows in groups.items()
        }
        # Counted from the end: a packed stream's groups index tokens, so `outs` may have fewer dims than y.
        dim = -3 if isinstance(self.base_layer, nn.Conv2d) else -1
        width = max([y.shape[dim], *(o.shape[dim] for o in outs.values())])
        y = _pad_labels(y, dim, width) if width != y.shape[dim] else y.clone()
        for s, rows in groups.items():
            y[rows] = _pad_labels(outs[s], dim, width).to(y.dtype)
        return y

    def remove_slot(self, slot: int) -> None:
        self.slots.discard(slot)
        self.overrides.pop(slot, None)


class MultiLinear(_MultiBase):
    """`nn.Linear` / GPT-2 `Conv1D` with per-row LoRA, DoRA, IA3 and bias/head overrides."""

    def __init__(self, base_layer: nn.Module, path: str, holder: ContextHolder, budget: PoolBudget) -> None:
        super().__init__(base_layer, path, holder)
        w = weight_rows(base_layer)
        self.out_features, self.in_features = int(w.shape[0]), int(w.shape[1])
        self._budget = budget
        self.lora: LoraPool | None = None
        self.dora: IA3Pool | None = None  # DoRA's per-row output factor g
        self.ia3_out: IA3Pool | None = None
        self.ia3_in: IA3Pool | None = None
        self.bias_delta: dict[int, torch.Tensor] = {}
        self.group: SiblingGroup | None = None  # siblings reading the same input share a shrink (fused.py)

    def _vector_pool(self, features: int) -> IA3Pool:
        w = self.base_layer.weight
        return IA3Pool(
            features,
            budget_bytes=self._budget.vector_bytes(features, torch.float32),
            num_slots=self._budget.num_slots,
            dtype=torch.float32,
            device=w.device,
        )

    def kernel_geometry(self) -> LoraGeometry:
        """What this layer's pools look like to the kernels (what `warm_up_kernels` compiles for); `sliced`
        when it belongs to a sibling group (fused.py: its shrink may run as the multi-slice launch)."""
        dtype = self.base_layer.weight.dtype
        cap = self._budget.rank_capacity
        return LoraGeometry(self.in_features, self.out_features, cap, dtype, dtype, self.group is not None)

    # -- loading ---------------------------------------------------------------------------------
    def load_lora(self, slot: int, t: LoraTensors) -> None:
        w = self.base_layer.weight
        if self.lora is None:
            self.lora = LoraPool(
                self.in_features,
                self.out_features,
                budget_bytes=self._budget.lora_bytes(self.path, self.in_features, self.out_features),
                num_slots=self._budget.num_slots,
                rank_capacity=self._budget.rank_capacity,
                dtype=torch.float32 if w.dtype == torch.float32 else w.dtype,
                device=w.device,
            )
        self.lora.load(slot, t.a.to(w.device), t.b.to(w.device), t.scale)
        if t.bias is not None:  # lora_bias: the LoRA branch adds scale · lora_B.bias
            self._add_bias_delta(slot, t.scale * t.bias.to(w))
        if t.magnitude is not None:
            base = weight_rows(self.base_layer).detach().float()  # (out, in)
            delta = t.scale * (t.b.to(base) @ t.a.to(base))  # (out, in)
            norm = (base + delta).norm(p=2, dim=1)  # (out,)
            if self.dora is None:
                self.dora = self._vector_pool(self.out_features)
            self.dora.load(slot, t.magnitude.to(base) / norm)
        self.slots.add(slot)

    def load_ia3(self, slot: int, vector: torch.Tensor, feedforward: bool) -> None:
        if feedforward:
            self.ia3_in = self.ia3_in or self._vector_pool(self.in_features)
            self.ia3_in.load(slot, vector.float().to(self.base_layer.weight.device))
        else:
            self.ia3_out = self.ia3_out or self._vector_pool(self.out_features)
            self.ia3_out.load(slot, vector.float().to(self.base_layer.weight.device))
        self.slots.add(slot)

    def set_override(self, slot: int, params: dict[str, torch.Tensor]) -> None:
        bias = self.base_layer.bias
        if set(params) == {"bias"} and bias is not None and params["bias"].shape == bias.shape:
            # a trained bias on an adapted layer: keep the difference, the rest of the row runs the kernels
            self._add_bias_delta(slot, params["bias"].to(bias) - bias.detach())
            return
        super().set_override(slot, params)

    def _add_bias_delta(self, slot: int, delta: torch.Tensor) -> None:
        """Per-slot additive bias (a trained base bias, or LoRA's `lora_B.bias`), (out,)."""
        previous = self.bias_delta.get(slot)
        self.bias_delta[slot] = delta if previous is None else previous + delta
        self.slots.add(slot)

    def remove_slot(self, slot: int) -> None:
        if self.lora is not None and self.lora.rank(slot):
            self.lora.evict(slot)
        for pool in (self.dora, self.ia3_out, self.ia3_in):
            if pool is not None and pool.page_of(slot) is not None:
                pool.evict(slot)
        self.bias_delta.pop(slot, None)
        super().remove_slot(slot)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        running = self._holder[0].current
        if running is not None:
            running.note_shape(x.shape)
        ctx = self.context
        if ctx is None:
            return self.base_layer(x, *args, **kwargs)
        flat = x.shape[:-1]
        x = ctx.rows_view(x, self.path)  # (B, L, in): OPT's MLP gets (B·L, in), tokens of row 0 first
        y = self._forward_rows(x, ctx)
        return y.reshape(*flat, y.shape[-1])  # a head override may be wider than the base layer

    def _forward_rows(self, x: torch.Tensor, ctx: RowContext) -> torch.Tensor:
        """x (B, L, in) -> (B, L, out), or wider when some row's head override is."""
        lead = x.shape[:-1]
        meta = ctx.meta(x.shape[1], x.device)
        x2 = x.reshape(-1, self.in_features)  # (T, in)
        if self.ia3_in is not None:
            x2 = ia3_scale_input(x2, self.ia3_in, meta)
        y = F.linear(x2, weight_rows(self.base_layer))  # (T, out)
        if self.lora is not None and (self.group is None or not self.group.apply(self, y, x2, meta)):
            lora_apply(y, x2, self.lora, meta)
        if self.dora is not None:
            ia3_scale_output(y, self.dora, meta)
        if self.base_layer.bias is not None:
            y = y + self.base_layer.bias
        if self.bias_delta:
            y = y.view(*lead, self.out_features)  # (B, L, out)
            for slot, index in ctx.index_groups(x.shape[1], x.device).items():
                if slot in self.bias_delta:
                    y[index] += self.bias_delta[slot]
            y = y.view(-1, self.out_features)
        if self.ia3_out is not None:
            ia3_scale_output(y, self.ia3_out, meta)
        y = y.view(*lead, self.out_features)
        return self._apply_overrides(x, y, ctx) if self.overrides else y


def kernel_geometries(model: nn.Module) -> set[LoraGeometry]:
    """The distinct shapes of `model`'s adapted linear layers, as the kernels see them."""
    return {m.kernel_geometry() for m in model.modules() if isinstance(m, MultiLinear)}


def warm_up_kernels(model: Any, max_batch_tokens: int) -> int:
    """Compile the Triton variants every adapted linear layer of `model` can launch (kernels/warmup.py), so
    that no batch compiles inside an engine step; a no-op unless the layers run Triton (CUDA, compiled).
    Returns the number of variants launched."""
    if not isinstance(model, nn.Module):
        return 0
    layer = next((m for m in model.modules() if isinstance(m, MultiLinear)), None)
    device = layer.base_layer.weight.device if layer is not None else None
    if device is None or device.type != "cuda" or resolve_backend(device) != "triton":
        return 0
    from kernels import triton_lora, warmup

    if triton_lora.INTERPRETED:
        return 0
    return len(warmup(kernel_geometries(model), max_batch_tokens=max_batch_tokens, device=device))


class MultiEmbedding(_MultiBase):
    """`nn.Embedding` with per-row LoRA (and DoRA) — few adapters target embeddings, so plain PyTorch."""

    def __init__(self, base_layer: nn.Embedding, path: str, holder: ContextHolder) -> None:
        super().__init__(base_layer, path, holder)
        self.lora: dict[int, tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]] = {}

    def load_lora(self, slot: int, t: LoraTensors) -> None:
        w = self.base_layer.weight
        a_t, b_t = t.a.T.to(w), t.b.T.to(w)  # (V, r), (r, D)
        g = None
        if t.magnitude is not None:
            delta = t.scale * (a_t @ b_t)  # (V, D)
            g = t.magnitude.to(w) / (w.detach() + delta).norm(p=2, dim=0)  # (D,)
        self.lora[slot] = (a_t, b_t, t.scale, g)
        self.slots.add(slot)

    def remove_slot(self, slot: int) -> None:
        self.lora.pop(slot, None)
        super().remove_slot(slot)

    def forward(self, ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        ctx = self.context
        y = self.base_layer(ids, *args, **kwargs)  # (B, L, D)
        if ctx is None:
            return y
        emb = self.base_layer
        for slot, rows in ctx.index_groups(ids.shape[1] if ids.dim() > 1 else 1, ids.device).items():
            if slot not in self.lora:
                continue
            a_t, b_t, scale, g = self.lora[slot]
            sub = F.embedding(
                ids[rows],
                a_t,
                emb.padding_idx,
                emb.max_norm,
                emb.norm_type,
                emb.scale_grad_by_freq,
                emb.sparse,
            )  # (b, L, r)
            out = y[rows] + scale * (sub @ b_t)
            y[rows] = out * g if g is not None else out
        return self._apply_overrides(ids, y, ctx) if self.overrides else y


class MultiOverride(_MultiBase):
    """Any other module an adapter replaces wholesale (e.g. LayerNorm biases under `bias="all"`)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        ctx = self.context
        return y if ctx is None or kwargs else self._apply_overrides(x, y, ctx, *args)
