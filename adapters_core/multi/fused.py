"""Sibling groups: adapted modules that read the same input share one LoRA shrink launch.

q/k/v of an attention block and gate/up of a gated MLP each receive the same activations `x`. vLLM merges
their base linears into one (QKVParallelLinear) and runs one shrink and one multi-slice expand over the
merged output. Here the base modules stay separate (model code calls each of them, hooks and per-module
DoRA/IA3/bias/head overrides keep working, and cross-attention feeds k/v another input), so the group shares
what is shareable without touching the base GEMMs:

- the first member to run with a given `x` computes the shrink of every taking-part member in ONE launch
  (`kernels.slices.lora_shrink_slices`, u: (n, T, R)) and stashes it with a key of `x`;
- every member (the first included) expands its own slice into its own base output right after its own
  GEMM: a multi-slice expand would need all the members' base outputs at once, i.e. computing k's and v's
  GEMMs inside q_proj's forward, which is wrong wherever k/v read another input and breaks module hooks.

Launches per decode step and block: q/k/v 6 -> 4, gate/up 4 -> 3 (a shrink and an expand per module
unfused; no memset of u either way: the shrink writes every entry an expand reads). On decode batches the
shared shrink runs the per-token programs of the single-module BGMV (same reduction order, bit-identical,
batch-invariant) unless the decode policy is "shared" (kernels/variants.py); on static decode metadata (a
captured CUDA graph) always the per-token programs, which read the slot buffer and never host segments. In a
mixed paged step the shared shrink runs the metadata's parts (kernels/slices.py): the decode tokens through
the per-token programs, the prefill chunks through the segment tiles, as `lora_apply` does.

Safety: a member uses the stash only when its own `x` is the same storage, shape, strides and version as the
first member's and the batch metadata is the same object; otherwise it runs its own `lora_apply`. When a
member arrives with another input while the stash still waits for siblings (cross-attention, a cached k/v
that is never recomputed, an input-side IA3 scaling), the siblings do not share their input in this model:
the group turns itself off for good and every member runs alone. A wrong answer is impossible either way;
the cost of a mismatch is one wasted rank-sized shrink. Only the Triton backend fuses: on the torch backend
`lora_apply`'s batched CPU path (kernels/grouped.py) is faster than a per-slice reference.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from kernels import BatchMeta, lora_expand, resolve_backend
from kernels.slices import MAX_SLICES, lora_shrink_slices

if TYPE_CHECKING:
    from .layers import MultiLinear

# Children of one parent module that read the parent's same input, per model family (Llama/Mistral/Qwen2/
# Gemma/Phi-3-style q/k/v and gate/up, BERT query/key/value, T5 q/k/v and wi_0/wi_1, Mixtral experts' w1/w3).
SIBLING_NAMES: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),
    ("gate_proj", "up_proj"),
    ("query", "key", "value"),
    ("q", "k", "v"),
    ("wi_0", "wi_1"),
    ("w1", "w3"),
)


def _input_key(x: torch.Tensor, meta: BatchMeta) -> tuple[Any, ...]:
    """What makes two members' inputs the same values: storage, geometry, version (bumped by in-place
    writes) and the batch metadata object. The stash holds `x`, so its storage cannot be reused meanwhile."""
    return (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x._version, id(meta))


@dataclass
class _Stash:
    key: tuple[Any, ...]
    x: torch.Tensor  # kept alive: the key's data_ptr stays unique while the stash waits
    meta: BatchMeta
    u: torch.Tensor  # (n, T, R) float32, slice i for members[i]
    members: list[MultiLinear]
    pending: set[int] = field(default_factory=set)  # id() of members that have not taken their slice


class SiblingGroup:
    """2..MAX_SLICES `MultiLinear`s that read one input. `apply` replaces a member's `lora_apply`."""

    def __init__(self, members: list[MultiLinear]) -> None:
        self.members = members
        self.enabled = True
        self._stash: _Stash | None = None

    def _taking_part(self) -> list[MultiLinear]:
        """Members that will run their LoRA on this batch with the group's input: a pool, rows of theirs in
        the batch (`context`), no input-side IA3 (that scales x per member), pools that agree."""
        parts = [m for m in self.members if m.lora is not None and m.ia3_in is None and m.context is not None]
        if len(parts) < 2:
            return []
        w0 = parts[0].lora.weights  # type: ignore[union-attr]
        for m in parts[1:]:
            w = m.lora.weights  # type: ignore[union-attr]
            if (w.in_features, w.rank_capacity, w.dtype, w.device) != (
                w0.in_features,
                w0.rank_capacity,
                w0.dtype,
                w0.device,
            ):
                return []
        return parts

    def apply(self, member: MultiLinear, y: torch.Tensor, x: torch.Tensor, meta: BatchMeta) -> bool:
        """y += member's LoRA of x (as `lora_apply`), from the group's shared shrink. False = not done here:
        the caller runs `lora_apply` itself. x: (T, in) the member's input; y: (T, out) its base output."""
        if not self.enabled or member.lora is None:
            return False
        if x.is_inference():  # no version counter (torch.inference_mode): an in-place write could not be seen
            return False
        key = _input_key(x, meta)
        stash = self._stash
        if stash is not None and stash.pending:
            if all(m is not member for m in stash.members):
                return False  # not part of this batch's group (e.g. its input-side IA3 scales x)
            if stash.key != key or id(member) not in stash.pending:
                # Another input, or a new forward while siblings never took theirs: they do not read one
                # input in this model (cross-attention, cached k/v). Stop fusing this group.
                self.enabled, self._stash = False, None
                return False
        else:
            if resolve_backend(x.device) != "triton":
                return False
            parts = self._taking_part()
            if member not in parts:
                return False
            pools = [m.lora for m in parts if m.lora is not None]
            u = lora_shrink_slices(x, pools, meta, zeroed=False)  # (n, T, R), read only where expand reads
            stash = _Stash(key, x, meta, u, parts, {id(m) for m in parts})
            self._stash = stash
        stash.pending.discard(id(member))
        u_mine = stash.u[next(i for i, m in enumerate(stash.members) if m is member)]  # (T, R)
        if not stash.pending:
            self._stash = None  # every slice taken: release x and u
        lora_expand(y, u_mine, member.lora, meta)
        return True


def install_groups(layers: Iterable[tuple[str, Any]]) -> list[SiblingGroup]:
    """Group `MultiLinear`s by parent path and `SIBLING_NAMES`, set each member's `group`; returns the groups.
    `layers`: (path, wrapped layer) pairs of the whole model."""
    from .layers import MultiLinear

    by_parent: dict[str, dict[str, MultiLinear]] = {}
    for path, layer in layers:
        if isinstance(layer, MultiLinear):
            parent, _, name = path.rpartition(".")
            by_parent.setdefault(parent, {})[name] = layer
    groups = []
    for children in by_parent.values():
        for names in SIBLING_NAMES:
            members = [children[n] for n in names if n in children][:MAX_SLICES]
            if len(members) >= 2:
                group = SiblingGroup(members)
                for m in members:
                    m.group = group
                groups.append(group)
    return groups
