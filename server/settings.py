"""`Settings`: every `swapyard serve` flag, each also read from `SWAPYARD_<NAME>` (pydantic-settings).

Precedence: flag > environment variable > default. A compose file or a Kubernetes manifest can therefore set
any option without a wrapper script (`SWAPYARD_BASE_MODEL=org/model SWAPYARD_PORT=9000 swapyard serve`).
`SWAPYARD_ADAPTERS` takes `NAME=SOURCE` pairs separated by commas (or a JSON list).
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "SWAPYARD_"


class Settings(BaseSettings):
    """Configuration of one server process. Field names are the flags (`max_batch_size` -> `--max-batch-size`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    # -- what to serve -----------------------------------------------------------------------------
    base_model: str | None = Field(
        default=None, description="base model: local directory or Hugging Face Hub id (omit for --demo)"
    )
    base_model_revision: str | None = Field(default=None, description="Hub revision of the base model")
    served_model_name: str | None = Field(
        default=None, description="the base model's name in OpenAI `model` fields (default: --base-model)"
    )
    adapters: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="adapters to load, NAME=PATH_OR_HUB_ID (repeatable)"
    )
    adapter_dir: str | None = Field(
        default=None, description="directory whose sub-directories with adapter_config.json are adapters"
    )
    demo: Literal["chat", "sentiment"] | None = Field(
        default=None,
        description="serve an embedded demo, built on first run without network: 'chat' (the default when "
        "--base-model is omitted) or 'sentiment' (classification)",
    )
    demo_dir: str | None = Field(
        default=None, description="where the demo is built/cached (default ~/.cache)"
    )
    # -- where -------------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="address to bind")
    port: int = Field(default=8080, ge=0, le=65535, description="port to bind (0 = any free port)")
    device: str | None = Field(default=None, description="'cpu' or 'cuda' (default: cuda if available)")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="base model dtype"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="log level"
    )
    # -- limits ------------------------------------------------------------------------------------
    max_input_tokens: int = Field(default=1024, ge=1, description="longest prompt, in tokens (longer -> 422)")
    max_total_tokens: int = Field(
        default=2048, ge=2, description="prompt + max_new_tokens must fit in this many tokens (-> 422)"
    )
    max_new_tokens_limit: int = Field(
        default=512, ge=1, description="largest max_new_tokens a request may ask for"
    )
    default_max_new_tokens: int = Field(
        default=20, ge=1, description="max_new_tokens when a request gives none"
    )
    max_batch_size: int = Field(default=32, ge=1, description="rows in the running batch at most")
    max_batch_tokens: int | None = Field(
        default=None,
        ge=1,
        description="tokens one model step runs at most: running rows' decode tokens first, then prefill chunks "
        "of new rows (a longer prompt is spread over steps); running rows are capped at this many too "
        "(default: 512 on the CPU, 2048 on a GPU)",
    )
    max_prefill_tokens_while_decoding: int | None = Field(
        default=None,
        ge=1,
        description="prefill tokens one model step runs at most while running rows decode in it, so that a long "
        "prompt being admitted slows their next tokens by a bounded amount (default: 64 on the CPU, where a "
        "step's time grows with its tokens; on a GPU no cap below --max-batch-tokens)",
    )
    kv_cache_bytes: int | None = Field(
        default=None,
        ge=1,
        description="bytes of the paged KV cache, preallocated at start-up (default: half of the GPU memory free "
        "after the model loads, 1 GiB on the CPU; the default is capped at what --max-batch-size rows of "
        "--max-total-tokens need, twice over)",
    )
    kv_block_size: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="positions per KV cache block (the unit of allocation and of prefix reuse)",
    )
    cuda_graphs: bool = Field(
        default=True,
        description="on a GPU, run decode-only steps as CUDA graphs captured at start-up per bucket of batch size "
        "and context width (steps with prefill, or rows of prefix tuning, LLaMA-Adapter, modules_to_save, trained biases or "
        "embedding LoRA, run eagerly); unused on the CPU",
    )
    max_queued_requests: int = Field(
        default=256, ge=1, description="requests waiting to start (running ones not counted); more -> 429"
    )
    max_request_bytes: int = Field(
        default=1 << 20, ge=1024, description="largest request body (larger -> 413)"
    )
    max_stop_sequences: int = Field(default=4, ge=0, description="stop sequences per request at most")
    max_classify_inputs: int = Field(default=64, ge=1, description="inputs per /classify request at most")
    max_image_pixels: int = Field(
        default=4096 * 4096,
        ge=1,
        description="largest image (width × height) /classify and /segment take (-> 413)",
    )
    max_adapters: int = Field(default=32, ge=1, description="adapters resident at once (device slots)")
    max_embedding_inputs: int = Field(
        default=64, ge=1, description="inputs per /v1/embeddings request at most"
    )
    embedding_pooling: Literal["auto", "cls", "mean", "last"] = Field(
        default="auto",
        description="how /v1/embeddings pools the last hidden states: 'auto' is CLS for encoders (BERT), the "
        "last token for causal LMs, the mean of the encoder for T5",
    )
    # -- adapter store (server/store): tiers, sources, limits ---------------------------------------
    adapter_device_bytes: int | None = Field(
        default=None,
        ge=1,
        description="device budget for resident adapters' LoRA pools, in bytes (default: a quarter of the GPU "
        "memory free after the base loads, capped at what --max-adapters adapters of --max-adapter-rank on every "
        "linear layer would take; 256 MiB on the CPU; server/budget.py)",
    )
    adapter_host_bytes: int = Field(
        default=1 << 30, ge=1, description="host RAM cache of validated adapters, in bytes (LRU)"
    )
    max_adapter_rank: int = Field(default=256, ge=1, description="largest LoRA rank an adapter may have")
    max_adapter_bytes: int = Field(
        default=256 << 20, ge=1024, description="largest adapter file (upload or load) in bytes (-> 413)"
    )
    adapter_root: str | None = Field(
        default=None,
        description="existing directory that POST /v1/adapters/{name}/load local paths resolve inside",
    )
    uploads_dir: str | None = Field(
        default=None, description="where uploaded adapters are stored (uploads are off without it)"
    )
    allow_hub_adapters: bool = Field(
        default=True, description="allow loading adapters from the Hub by request"
    )
    allow_bin_weights: bool = Field(
        default=False,
        description="read adapter_model.bin (PEFT's format before safetensors) from local and Hub adapters with "
        "torch.load(weights_only=True), which builds tensors only and never runs code; uploads stay "
        "safetensors-only",
    )
    hub_adapter_owners: str | None = Field(
        default=None, description="comma-separated Hub owners adapters may come from (default: any)"
    )
    on_demand_adapters: bool = Field(
        default=False,
        description="load an unknown adapter on its first request: a Hub repo 'owner/name' whose owner is in "
        "--hub-adapter-owners, or a folder NAME under --adapter-root (off: unknown names are a 404)",
    )
    preload_adapters: int = Field(
        default=64, ge=0, description="adapters validated and loaded at startup (the rest load on first use)"
    )
    adapter_wait_s: float = Field(
        default=30.0, gt=0, description="how long a request waits for device room for its adapter (-> 503)"
    )
    rate_limit: str | None = Field(
        default=None,
        description="token rate per API key (per client address without keys), e.g. '20000/minute' or "
        "'20000/minute; 1000000/day': a request costs its prompt tokens + max new tokens; over -> 429 "
        "with Retry-After (server/ratelimit.py)",
    )
    # -- auth and shutdown ---------------------------------------------------------------------------
    api_key: str | None = Field(
        default=None, repr=False, description="API key for inference routes (Authorization: Bearer KEY)"
    )
    admin_key: str | None = Field(
        default=None,
        repr=False,
        description="admin key for /v1/adapters admin routes (they are off without it)",
    )
    docs_when_keyed: Literal["require-key", "off"] = Field(
        default="require-key",
        description="/docs, /redoc and /openapi.json when --api-key or --admin-key is set: 'require-key' "
        "(they need a key, as the inference routes do) or 'off' (404); without keys they are open",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="on SIGTERM, how long running requests may take to finish"
    )
    # -- slow clients ---------------------------------------------------------------------------------
    request_read_timeout_s: float = Field(
        default=30.0, gt=0, description="longest wait for each piece of a request body (longer -> 408)"
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, description="idle keep-alive connections are closed after this many seconds"
    )

    @field_validator("adapters", mode="before")
    @classmethod
    def _split_adapters(cls, value: Any) -> Any:
        """Env gives one string: a JSON list or comma-separated `NAME=SOURCE` pairs."""
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("adapters")
    @classmethod
    def _check_pairs(cls, value: list[str]) -> list[str]:
        for item in value:
            name, sep, source = item.partition("=")
            if not sep or not name.strip() or not source.strip():
                raise ValueError(f"adapter {item!r} is not NAME=SOURCE, e.g. --adapter fr=./adapters/fr")
        return value

    @field_validator("adapter_root")
    @classmethod
    def _existing_root(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isdir(value):
            raise ValueError(
                f"--adapter-root {value!r} is not an existing directory; create it or fix the path"
            )
        return value

    @field_validator("rate_limit")
    @classmethod
    def _parsable_rate(cls, value: str | None) -> str | None:
        if value is not None:
            from .ratelimit import parse_rates

            parse_rates(value)  # ValueError naming the format
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.max_input_tokens >= self.max_total_tokens:
            raise ValueError(
                f"max_input_tokens ({self.max_input_tokens}) must be below max_total_tokens "
                f"({self.max_total_tokens}) so that at least one token can be generated"
            )
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("default_max_new_tokens must not exceed max_new_tokens_limit")
        if self.on_demand_adapters and self.adapter_root is None and not self.hub_owners():
            raise ValueError(
                "--on-demand-adapters needs somewhere to load from: --adapter-root DIR (its folders), and/or "
                "--hub-adapter-owners owner1,owner2 (Hub repos of those owners only)"
            )
        return self

    def hub_owners(self) -> tuple[str, ...] | None:
        """`--hub-adapter-owners` as a tuple (None: any owner)."""
        if self.hub_adapter_owners is None:
            return None
        return tuple(o.strip() for o in self.hub_adapter_owners.split(",") if o.strip())

    def adapter_pairs(self) -> list[tuple[str, str]]:
        """`--adapter` values as (name, source)."""
        pairs = [item.partition("=") for item in self.adapters]
        return [(name.strip(), source.strip()) for name, _, source in pairs]

    @property
    def model_name(self) -> str:
        """The base model's public name (OpenAI `model`, /v1/models)."""
        return public_base_name(self.served_model_name, self.base_model)


def public_base_name(served_model_name: str | None, base_model: str | None) -> str:
    """The base model's name as clients see it: `--served-model-name`, else the Hub id, else the local
    directory's own name — never the server's absolute path (issue 12: no server path in any response)."""
    if served_model_name:
        return served_model_name
    if base_model and os.path.isdir(base_model):
        return os.path.basename(os.path.normpath(os.path.abspath(base_model)))
    return base_model or "base"


def env_name(field: str) -> str:
    """`max_batch_size` -> `SWAPYARD_MAX_BATCH_SIZE`."""
    return ENV_PREFIX + field.upper()
