"""The probe forward of validation: every module an adapter changes, run on a few probe rows with and without it.

Finite weights can still break every answer: with `lora_B × 1e30` a layer's outputs stay finite in float32,
but the next normalisation squares them (RMSNorm's mean of x²), overflows, and the row's logits become NaN or
constant — sampling fails, greedy decoding returns empty text. So each adapted module runs on probe rows
(unit-RMS Gaussian inputs, as after a normalisation; every row of an embedding table) and the adapter is
refused unless, for every row, the adapted output is finite in the module's own dtype (float16 overflows at
65504) and its sum of squares is finite in float32. The same rule holds for prompt tables, which enter the
model as hidden states.

The probe also measures what the adapter does: `max |adapted − base|` over the probe, reported per adapter
(the server shows it in the adapter's record). It reads the base modules and never changes them, so it may
run while the model serves other requests.

Math per probed module (x: probe rows (T, in), W: (out, in), b: bias), as multi/layers.py applies it:
    x' = x ⊙ l_in (IA3 feed-forward);  y = W x' + s·B A x';  y = g ⊙ y (DoRA);  y += b' + s·b_lora;  y = y ⊙ l_out
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import AdapterWeightsError
from ..targeting import is_linear_like

if TYPE_CHECKING:
    from .parsed import LoraTensors, ParsedAdapter

PROBE_ROWS = 4
EMBEDDING_CHUNK = 8192  # embedding rows probed per step (all of them, in chunks)
_SEED = 0


@dataclass(frozen=True)
class ProbeResult:
    """max_delta: max |adapted − base| over every probed output (None: nothing comparable, e.g. a prompt
    table or a head of another width); module: where that maximum is."""

    max_delta: float | None
    module: str | None


def _weight_rows(module: nn.Module) -> torch.Tensor:
    w = module.weight
    assert isinstance(w, torch.Tensor)
    return w.T if type(module).__name__ == "Conv1D" else w  # GPT-2's Conv1D stores (in, out)


def probe_rows(features: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The probe input of a layer with `features` inputs: (PROBE_ROWS, features) standard Gaussian rows
    (unit RMS, like hidden states after a normalisation), the same for every adapter."""
    g = torch.Generator().manual_seed(_SEED)
    return torch.randn(PROBE_ROWS, features, generator=g).to(device, dtype)


def _check(where: str, y: torch.Tensor, dtype: torch.dtype, detail: str = "") -> None:
    """y: (T, F) float32 outputs. Refuse non-finite values, values the module's dtype cannot hold, and rows
    whose sum of squares overflows float32 (a normalisation downstream would)."""
    fits = bool(torch.isfinite(y).all())
    if fits and dtype.is_floating_point and dtype != torch.float32:
        fits = bool(torch.isfinite(y.to(dtype)).all())
    if fits:
        fits = bool(torch.isfinite(y.pow(2).sum(-1)).all())
    if not fits:
        peak = float(y.nan_to_num(nan=float("inf")).abs().max())
        raise AdapterWeightsError(
            f"{where}: on the validation probe its outputs are not finite or overflow when normalised (max "
            f"|output| {peak:.3g}{detail}); every answer through it would be NaN or empty. Its weights or scale "
            "are far too large: re-export the adapter from a healthy checkpoint."
        )


def _linear(
    module: nn.Module,
    lora: LoraTensors | None,
    ia3: tuple[torch.Tensor, bool] | None,
    override: dict[str, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(adapted, base) outputs, both (T, out) float32, of a Linear / Conv1D on the probe rows."""
    w = _weight_rows(module)  # (out, in)
    dev, dtype = w.device, w.dtype
    x = probe_rows(int(w.shape[1]), device=dev, dtype=dtype)  # (T, in)
    bias = module.bias if isinstance(module.bias, torch.Tensor) else None
    base = F.linear(x, w).float() + (bias.float() if bias is not None else 0.0)
    params = {k: v.to(dev, dtype) for k, v in (override or {}).items()}
    if "weight" in params:  # a full copy of the module (modules_to_save): it replaces the base outright
        return functional_call(module, params, (x,)).float(), base
    x_in = x
    if ia3 is not None and ia3[1]:
        x_in = (x.float() * ia3[0].to(dev)).to(dtype)
    y = F.linear(x_in, w).float()
    if lora is not None:
        a, b = lora.a.to(dev, torch.float32), lora.b.to(dev, torch.float32)  # (r, in), (out, r)
        y = y + lora.scale * (x_in.float() @ a.T) @ b.T
        if lora.magnitude is not None:
            norm = (w.float() + lora.scale * (b @ a)).norm(p=2, dim=1)  # (out,)
            y = y * (lora.magnitude.to(dev) / norm)
        if lora.bias is not None:
            y = y + lora.scale * lora.bias.to(dev)
    b_eff = params.get("bias", bias)
    if b_eff is not None:
        y = y + b_eff.float()
    if ia3 is not None and not ia3[1]:
        y = y * ia3[0].to(dev)
    return y, base


def _embedding_chunks(
    module: nn.Embedding, lora: LoraTensors | None, override: dict[str, torch.Tensor] | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(adapted, base) rows, (n, D) float32, for every id of the table, EMBEDDING_CHUNK ids at a time (a
    float32 copy of a whole large-vocabulary table would take gigabytes)."""
    weight = module.weight.detach()  # (V, D)
    dev = weight.device
    full = override["weight"].to(dev) if override and "weight" in override else None
    a_t = lora.a.T.to(dev, torch.float32) if lora is not None else None  # (V, r)
    b_t = lora.b.T.to(dev, torch.float32) if lora is not None else None  # (r, D)
    scale = lora.scale if lora is not None else 0.0
    chunks = range(0, weight.shape[0], EMBEDDING_CHUNK)

    def adapted(i: int) -> torch.Tensor:
        y = (full if full is not None else weight)[i : i + EMBEDDING_CHUNK].float()
        if a_t is not None and b_t is not None:
            y = y + scale * a_t[i : i + EMBEDDING_CHUNK] @ b_t
        return y

    gain = None
    if lora is not None and lora.magnitude is not None:  # DoRA: g = m / ||W + s·(B A)ᵀ|| per column
        squares = sum(adapted(i).pow(2).sum(0) for i in chunks)
        gain = lora.magnitude.to(dev) / torch.as_tensor(squares).sqrt()  # (D,)
    for i in chunks:
        y = adapted(i)
        yield (y * gain if gain is not None else y), weight[i : i + EMBEDDING_CHUNK].float()


def _effect(adapted: torch.Tensor, base: torch.Tensor) -> float | None:
    return float((adapted - base).abs().max()) if adapted.shape == base.shape else None


@torch.no_grad()
def probe_adapter(parsed: ParsedAdapter, modules: dict[str, nn.Module]) -> ProbeResult:
    """Run the probe over every module `parsed` changes; `AdapterWeightsError` naming the first module whose
    adapted outputs are not finite (see the module docstring)."""
    best: tuple[float, str] | None = None
    for path in sorted(set(parsed.lora) | set(parsed.ia3) | set(parsed.overrides)):
        module = modules[path]
        lora, ia3, override = parsed.lora.get(path), parsed.ia3.get(path), parsed.overrides.get(path)
        detail = f"; LoRA scale {lora.scale:.3g}" if lora is not None else ""
        if is_linear_like(module):
            pairs: Iterable[tuple[torch.Tensor, torch.Tensor]] = [_linear(module, lora, ia3, override)]
        elif isinstance(module, nn.Embedding):
            pairs = _embedding_chunks(module, lora, override)
        else:  # e.g. a LayerNorm's trained bias: its values enter the hidden states as they are
            pairs = [
                (t.detach().float().reshape(1, -1), getattr(module, name).detach().float().reshape(1, -1))
                for name, t in (override or {}).items()
            ]
        dtype = next((p.dtype for p in module.parameters()), torch.float32)
        for adapted, base in pairs:
            _check(path, adapted, dtype, detail)
            effect = _effect(adapted, base)
            if effect is not None and (best is None or effect > best[0]):
                best = (effect, path)
    if parsed.prompt is not None:
        model_dtype = next((p.dtype for p in modules[""].parameters()), torch.float32)
        for table in parsed.prompt.tensors():  # rows that enter the model as hidden states, keys or values
            _check(
                f"the {parsed.prompt.kind} prompt",
                table.detach().float().reshape(-1, table.shape[-1]),
                model_dtype,
            )
    return ProbeResult(best[0], best[1]) if best is not None else ProbeResult(None, None)
