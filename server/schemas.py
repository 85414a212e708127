"""Request and response bodies of the HTTP API (DESIGN.md), apart from the engine's internal types.

Native bodies follow text-generation-inference; the `/v1` bodies follow OpenAI. Values are checked here
(types, ranges, finiteness: NaN and ±inf are refused); limits that depend on settings (token counts, stop
sequences) are checked by the routes, because settings belong to the app, not to the module.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Finite numbers only: JSON parsers accept NaN/Infinity literals, which must never reach the sampler.
_FINITE = ConfigDict(allow_inf_nan=False, extra="forbid")


class GenerateParameters(BaseModel):
    """`parameters` of /generate and /generate_stream. Unknown keys are refused (422), not ignored."""

    model_config = _FINITE

    adapter_id: str | None = Field(
        default=None, min_length=1, description="adapter to use; null = the base model"
    )
    max_new_tokens: int | None = Field(default=None, ge=1, description="tokens to generate at most")
    do_sample: bool = Field(default=False, description="sample instead of greedy decoding")
    temperature: float | None = Field(
        default=None, gt=0.0, description="softmax temperature (> 0); enables sampling"
    )
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="nucleus sampling mass in (0, 1]")
    top_k: int | None = Field(default=None, ge=1, description="sample among the k most likely tokens")
    repetition_penalty: float | None = Field(
        default=None, gt=0.0, description="> 1 discourages repeats (CTRL)"
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="seed of this request's own generator"
    )
    stop: list[str] = Field(default_factory=list, description="stop when the text contains one of these")
    details: bool = Field(default=False, description="return finish reason, token ids, texts and logprobs")

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: list[str]) -> list[str]:
        if any(s == "" for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value


class GenerateRequest(BaseModel):
    model_config = _FINITE

    inputs: str = Field(min_length=1, description="the prompt")
    parameters: GenerateParameters = Field(default_factory=lambda: GenerateParameters())
    stream: bool = Field(
        default=False, description="accepted for TGI compatibility; use /generate_stream to stream"
    )


class TokenInfo(BaseModel):
    id: int
    text: str
    logprob: float
    special: bool = False


class Details(BaseModel):
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    seed: int | None
    tokens: list[TokenInfo]


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


class StreamEvent(BaseModel):
    """One SSE `data:` event of /generate_stream: a token; the last also carries `generated_text`."""

    index: int
    token: TokenInfo
    generated_text: str | None = None
    details: Details | None = None


class ClassifyParameters(BaseModel):
    model_config = _FINITE

    adapter_id: str | None = Field(
        default=None, min_length=1, description="classification adapter; null = base head"
    )
    top_k: int | None = Field(default=None, ge=1, description="return the k best labels (default: all)")


class ClassifyRequest(BaseModel):
    model_config = _FINITE

    inputs: str | list[str] = Field(description="one text or a list of texts")
    parameters: ClassifyParameters = Field(default_factory=lambda: ClassifyParameters())

    @field_validator("inputs")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts or any(t == "" for t in texts):
            raise ValueError("inputs must be a non-empty text or a non-empty list of non-empty texts")
        return value


class LabelScore(BaseModel):
    label: str
    score: float


# -- OpenAI-compatible ------------------------------------------------------------------------------
_OPENAI = ConfigDict(allow_inf_nan=False, extra="ignore")  # OpenAI clients send fields we do not use


class _OpenAISampling(BaseModel):
    model_config = _OPENAI

    model: str = Field(min_length=1, description="an adapter name, or the base model's name for no adapter")
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="one choice per request")
    logprobs: Any = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops


class CompletionRequest(_OpenAISampling):
    prompt: str = Field(min_length=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatCompletionRequest(_OpenAISampling):
    messages: list[ChatMessage] = Field(min_length=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    """One entry of GET /v1/models: the base or an adapter."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "swapyard"
    type: str = Field(description="'base' or the adapter's PEFT type (LORA, IA3, ...)")
    task_type: str | None = None
    rank: int | None = Field(default=None, description="LoRA-family rank; null for other methods")
    resident: str = Field(
        description="where its weights live now: the device ('cpu', 'cuda:0', ...) when resident there, "
        "else the store tier: 'host' (RAM), 'disk' or 'source' (not fetched yet)"
    )
    source: str | None = None
    parent: str | None = Field(default=None, description="the base model, for adapters")
    tier: str | None = Field(default=None, description="adapter store tier: device, host, disk or source")
    size_bytes: int | None = Field(default=None, description="the adapter's weights on the device, in bytes")
    content_hash: str | None = Field(default=None, description="sha256 of config + weights: its version")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    error: str
    error_type: str


# -- adapter management (/v1/adapters, admin key) ---------------------------------------------------------
class AdapterRecord(BaseModel):
    """One registered adapter: what it is, where it comes from, which version, and where it lives now."""

    name: str
    method: str | None = Field(description="PEFT type (LORA, IA3, ...); null until first loaded")
    task_type: str | None = None
    rank: int | None = Field(description="LoRA-family rank; null for other methods or until loaded")
    size_bytes: int | None = Field(description="weights on the device, in bytes")
    source: str = Field(description="'local:<path>', 'hub:<owner/name>[@revision]' or 'upload'")
    revision: str | None = Field(description="the Hub commit the revision resolved to")
    content_hash: str | None = Field(description="sha256 of config + weights: the version being served")
    tier: Literal["device", "host", "disk", "source"]
    loaded_at: float | None = None
    probe_max_delta: float | None = Field(
        default=None,
        description="the validation probe's max |adapted - base| over the adapted layers' outputs; "
        "null until loaded, and for adapters without adapted layers (prompt methods)",
    )
    hits: int = Field(description="requests that asked for it")
    leases: int = Field(description="requests holding it right now")


class AdapterRecordList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterRecord]


class LoadAdapterRequest(BaseModel):
    """`POST /v1/adapters/{name}/load`: from the Hub (`id`, `revision`) or a path inside the adapter root."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["hub", "local"]
    id: str | None = Field(default=None, min_length=1, description="Hub repo id 'owner/name' (source hub)")
    path: str | None = Field(
        default=None, min_length=1, description="path under --adapter-root (source local)"
    )
    revision: str | None = Field(default=None, min_length=1, description="Hub branch, tag or commit")
    subfolder: str | None = Field(default=None, min_length=1, description="folder inside the Hub repo")

    @model_validator(mode="after")
    def _one_location(self) -> LoadAdapterRequest:
        if self.source == "hub" and (self.id is None or self.path is not None):
            raise ValueError("source 'hub' takes `id` (and optionally `revision`, `subfolder`), not `path`")
        if self.source == "local" and (self.path is None or self.id or self.revision or self.subfolder):
            raise ValueError("source 'local' takes `path` only")
        return self


class DeletedAdapter(BaseModel):
    name: str
    deleted: bool = True
