"""`StoreConfig`: the adapter store's knobs (the server's settings fill it; tests build it directly)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoreConfig:
    """Budgets, sources and limits of one `AdapterStore`.

    Tiers: the device tier's budget is the model's own (`MultiAdapterModel(max_adapters=...,
    adapter_memory_bytes=...)`: slots, per-layer pools, module copies), not a knob here;
    `host_budget_bytes` bounds the RAM cache of validated adapters; the disk tier is huggingface_hub's cache
    (`hub_cache_dir`, None = its default) plus local and uploaded files.
    """

    adapter_roots: tuple[str, ...] = ()
    uploads_root: str | None = None
    allow_hub: bool = True
    # adapter_model.bin from local and Hub sources, read with torch.load(weights_only=True); never uploads
    allow_bin_weights: bool = False
    hub_owners: tuple[str, ...] | None = None
    hub_cache_dir: str | None = None
    hub_token: str | None = None
    host_budget_bytes: int = 1 << 30
    max_rank: int = 256
    max_adapter_bytes: int = 512 << 20
    load_workers: int = 2
    capacity_timeout_s: float = 30.0
    delete_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "host_budget_bytes",
            "max_rank",
            "max_adapter_bytes",
            "load_workers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"StoreConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.capacity_timeout_s < 0 or self.delete_timeout_s < 0:
            raise ValueError("StoreConfig timeouts must be >= 0 seconds")
