"""The engine: continuous batching over a MultiAdapterModel (engine.py), and how one is built from settings."""

from __future__ import annotations

import logging

from ..adapters import AdapterRegistry, on_demand_policy, store_config
from ..metrics import Metrics
from ..modeling import load_base
from ..settings import Settings, public_base_name
from ..store import PrometheusStoreMetrics
from .engine import Engine, EngineHold
from .limits import TokenLimits, context_length
from .paged import PagingConfig
from .types import (
    ClassifyJob,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    PromptLogprobs,
    RequestCancelledError,
    RequestHandle,
    TokenEvent,
)

log = logging.getLogger("swapyard.engine")

__all__ = [
    "ClassifyJob",
    "Engine",
    "EngineHold",
    "ErrorEvent",
    "FinishEvent",
    "GenerationRequest",
    "PromptLogprobs",
    "RequestCancelledError",
    "RequestHandle",
    "TokenEvent",
    "TokenLimits",
    "build_engine",
]


def build_engine(settings: Settings, metrics: Metrics | None = None) -> Engine:
    """Load the base model and every adapter the settings name; the engine is returned not yet started.

    Without --base-model the embedded demo is served (built on first run, see demo/). The token
    limits are the settings', clamped to the base's context length (engine/limits.py; the clamp is logged).
    """
    base_model, adapter_dir, base_name = settings.base_model, settings.adapter_dir, settings.served_model_name
    if base_model is None:
        from ..demo import prepare

        demo, demo_name = prepare(settings.demo, settings.demo_dir)
        base_model, adapter_dir = str(demo.base_dir), adapter_dir or str(demo.adapter_dir)
        base_name = base_name or demo_name
    log.info("loading base model %s", base_model)
    base = load_base(settings, base_model)
    metrics = metrics or Metrics()
    # The store registers adapters here; the app's lifespan validates and preloads them (registry.start),
    # on the event loop that will serve their leases.
    registry = AdapterRegistry(
        base.model,
        base_name=public_base_name(base_name, base_model),
        base_id2label=base.id2label,
        resident=str(base.device),
        config=store_config(settings),
        metrics=PrometheusStoreMetrics(metrics.registry),
        on_demand=on_demand_policy(settings),
    )
    for name, source in settings.adapter_pairs():
        registry.register(name, source)
    if adapter_dir:
        registry.register_dir(adapter_dir)
    return Engine(
        base,
        registry,
        max_batch_size=settings.max_batch_size,
        max_queued_requests=settings.max_queued_requests,
        limits=TokenLimits.from_settings(
            settings, context_length(base.config, base.tokenization.tokenizer), base.kind
        ),
        metrics=metrics,
        paging=PagingConfig.from_settings(settings),
    )
