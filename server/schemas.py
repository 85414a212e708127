"""Request and response bodies of the HTTP API (DESIGN.md), apart from the engine's internal types.

Native bodies follow text-generation-inference; the `/v1` bodies follow OpenAI. Values are checked here
(types, ranges, finiteness: NaN and ±inf are refused); limits that depend on settings (token counts, stop
sequences) are checked by the routes, because settings belong to the app, not to the module.

Request bodies are strict: ints are ints (not "10", not true), bools are bools, floats take ints; text is
valid Unicode (a lone surrogate such as "\ud83d", which JSON can spell, is a 422). Every documented TGI or
OpenAI parameter is declared: it is honoured, or `unsupported()` names it and the route answers 422 —
nothing is accepted and then ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .errors import UnsupportedParameterError


def _unicode_text(value: Any) -> Any:
    """Refuse text the tokenizer cannot take: JSON's \ud800-\udfff escapes make lone surrogates."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"text holds a lone surrogate ({value[exc.start]!r} at index {exc.start}), which is not "
                "valid Unicode; send UTF-8 text (a surrogate pair, e.g. \\ud83d\\ude00, is one character)"
            ) from None
    return value


# A request string: valid Unicode (anything the tokenizer and the JSON response can carry).
Text = Annotated[str, BeforeValidator(_unicode_text)]

# Request bodies: strict types, finite numbers only (JSON parsers accept NaN/Infinity literals, which must
# never reach the sampler), unknown keys refused (422) rather than ignored.
_REQUEST = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
MAX_CHOICES = 16  # n / best_of: rows one request may add to the engine
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat top_logprobs


class Grammar(BaseModel):
    """TGI's `grammar`: a JSON schema (`json`, or `json_object`) or a regular expression (`regex`)."""

    model_config = _REQUEST

    type: Literal["json", "json_object", "regex"]
    value: dict[str, Any] | str = Field(description="the JSON schema (object or its text), or the regex")


def refuse_unsupported(names: list[str]) -> None:
    """422 naming every documented parameter that was given a value this server does not implement."""
    if len(names) == 1:
        raise UnsupportedParameterError(
            f"`{names[0]}` is not supported by this server yet; leave it out (or at its default value)"
        )
    if names:
        listed = ", ".join(f"`{n}`" for n in names)
        raise UnsupportedParameterError(
            f"{listed} are not supported by this server yet; leave them out (or at their default values)"
        )


class GenerateParameters(BaseModel):
    """`parameters` of /generate and /generate_stream: TGI's documented parameters. Unknown keys are refused
    (422), not ignored; documented ones this server does not implement are refused by `unsupported()`."""

    model_config = _REQUEST

    adapter_id: Text | None = Field(
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
    stop: list[Text] = Field(default_factory=list, description="stop when the text contains one of these")
    details: bool = Field(default=False, description="return finish reason, token ids, texts and logprobs")
    return_full_text: bool = Field(default=False, description="prepend the prompt to `generated_text`")
    truncate: int | None = Field(
        default=None, ge=1, description="keep only the last `truncate` tokens of the prompt (as TGI does)"
    )
    best_of: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CHOICES,
        description="sample this many sequences (seeds seed, seed+1, ...) and return the one with the "
        "highest cumulative logprob; the others in details.best_of_sequences (needs sampling, not streaming)",
    )
    typical_p: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="typical decoding mass in (0, 1); enables sampling"
    )
    top_n_tokens: int | None = Field(
        default=None, ge=0, le=MAX_TOP_LOGPROBS, description="the n most likely tokens at each step"
    )
    grammar: Grammar | None = Field(
        default=None, description='structured output: {"type": "json", "value": schema} or "regex"'
    )
    # Documented by TGI, not implemented here: accepted only at their defaults.
    decoder_input_details: bool = Field(
        default=False,
        description="the prompt tokens' logprobs in details.prefill (needs details; not when streaming, as "
        "TGI; decoder-only bases: an encoder-decoder's prompt is its encoder's input)",
    )
    frequency_penalty: float | None = Field(default=None, description="not supported yet: only 0")
    watermark: bool = Field(default=False, description="not supported yet: only false")

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: list[str]) -> list[str]:
        if any(s == "" for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    def unsupported(self) -> list[str]:
        """The TGI parameters given a value this server does not implement yet (issue 17)."""
        refused = {
            "frequency_penalty": self.frequency_penalty not in (None, 0.0),
            "watermark": self.watermark,
        }
        return [name for name, given in refused.items() if given]


class GenerateRequest(BaseModel):
    model_config = _REQUEST

    inputs: Text = Field(min_length=1, description="the prompt")
    parameters: GenerateParameters = Field(default_factory=lambda: GenerateParameters())
    stream: bool | None = Field(
        default=None,
        description="TGI's compatibility flag: must match the route (false on /generate, true on "
        "/generate_stream) when given",
    )


class TokenInfo(BaseModel):
    id: int
    text: str
    logprob: float | None  # None only for the first prompt token of details.prefill (nothing predicts it)
    special: bool = False


class BestOfSequence(BaseModel):
    """One of the other `best_of` candidates (TGI)."""

    generated_text: str
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    seed: int | None
    prefill: list[TokenInfo] = Field(default_factory=list)
    tokens: list[TokenInfo]
    top_tokens: list[list[TokenInfo]] | None = None


class Details(BaseModel):
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    seed: int | None
    prefill: list[TokenInfo] = Field(
        default_factory=list,
        description="with decoder_input_details: the prompt's tokens and logprobs (the first one's null)",
    )
    tokens: list[TokenInfo]
    top_tokens: list[list[TokenInfo]] | None = Field(
        default=None, description="with top_n_tokens: the n most likely tokens at each step"
    )
    best_of_sequences: list[BestOfSequence] | None = None


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


class StreamEvent(BaseModel):
    """One SSE `data:` event of /generate_stream: a token; the last also carries `generated_text`."""

    index: int
    token: TokenInfo
    top_tokens: list[TokenInfo] = Field(default_factory=list, description="with top_n_tokens (TGI)")
    generated_text: str | None = None
    details: Details | None = None


class ClassifyParameters(BaseModel):
    model_config = _REQUEST

    adapter_id: Text | None = Field(
        default=None, min_length=1, description="classification adapter; null = base head"
    )
    top_k: int | None = Field(default=None, ge=1, description="return the k best labels (default: all)")


class ClassifyRequest(BaseModel):
    model_config = _REQUEST

    inputs: Text | list[Text] = Field(description="one text or a list of texts")
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
class StreamOptions(BaseModel):
    model_config = _REQUEST

    include_usage: bool = Field(default=False, description="send a last chunk with `usage` before [DONE]")


class _OpenAISampling(BaseModel):
    """What /v1/completions and /v1/chat/completions share. OpenAI's other documented parameters are
    declared too: identifiers with no effect on the output are accepted (`user`), the rest are honoured or
    refused by `unsupported()` when given a non-default value."""

    model_config = _REQUEST

    model: Text = Field(min_length=1, description="an adapter name, or the base model's name for no adapter")
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1, description="vLLM's extension")
    repetition_penalty: float | None = Field(default=None, gt=0.0, description="vLLM's extension")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = Field(default=None, description="with stream: true only")
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description="choices: rows with seeds seed, seed+1, ...")
    user: Text | None = Field(default=None, description="the end user's id (accepted; not used)")
    # vLLM's extensions.
    stop_token_ids: list[int] | None = Field(default=None, description="token ids that end the output")
    ignore_eos: bool = Field(default=False, description="go on past the model's EOS")
    min_tokens: int = Field(
        default=0, ge=0, description="EOS and stop_token_ids are masked until this many tokens"
    )
    # Documented by OpenAI, not implemented here yet (issue 17): accepted only at their defaults.
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, description="only 0")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, description="only 0")
    logit_bias: dict[str, float] | None = Field(default=None, description="only empty")

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _OpenAISampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def unsupported(self) -> list[str]:
        """The parameters given a value this server does not implement yet (issue 17)."""
        refused = {
            "frequency_penalty": self.frequency_penalty not in (None, 0.0),
            "presence_penalty": self.presence_penalty not in (None, 0.0),
            "logit_bias": bool(self.logit_bias),
        }
        return [name for name, given in refused.items() if given] + self._unsupported()

    def _unsupported(self) -> list[str]:
        return []


class CompletionRequest(_OpenAISampling):
    prompt: Text = Field(min_length=1)
    echo: bool = Field(default=False, description="prepend the prompt to the returned text")
    best_of: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CHOICES,
        description="candidates to sample (>= n); the n with the highest cumulative logprob are returned",
    )
    logprobs: int | None = Field(
        default=None, ge=0, le=5, description="the sampled token's logprob and the k most likely tokens'"
    )
    suffix: Text | None = Field(default=None, description="not supported: only null")

    def _unsupported(self) -> list[str]:
        refused = {"suffix": self.suffix is not None}
        return [name for name, given in refused.items() if given]


class ChatMessage(BaseModel):
    model_config = _REQUEST

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text
    name: Text | None = Field(default=None, description="the participant's name, given to the chat template")


class ChatCompletionRequest(_OpenAISampling):
    messages: list[ChatMessage] = Field(min_length=1)
    # Identifiers and hints that do not change the answer: accepted.
    metadata: dict[str, Text] | None = None
    prompt_cache_key: Text | None = Field(default=None, description="prompt prefixes are cached anyway")
    safety_identifier: Text | None = None
    parallel_tool_calls: bool | None = Field(default=None, description="no effect: tools are not supported")
    logprobs: bool | None = Field(default=None, description="each generated token's logprob")
    top_logprobs: int | None = Field(
        default=None, ge=0, le=MAX_TOP_LOGPROBS, description="with logprobs: the k most likely tokens"
    )
    response_format: dict[str, Any] | None = Field(
        default=None, description='{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}'
    )
    # Documented by OpenAI, not implemented here.
    tools: list[dict[str, Any]] | None = Field(default=None, description="not supported: only empty")
    tool_choice: Text | dict[str, Any] | None = Field(default=None, description='only "none"')
    functions: list[dict[str, Any]] | None = Field(default=None, description="not supported: only empty")
    function_call: Text | dict[str, Any] | None = Field(default=None, description='only "none"')
    modalities: list[Text] | None = Field(default=None, description='only ["text"]')
    audio: dict[str, Any] | None = Field(default=None, description="not supported: only null")
    prediction: dict[str, Any] | None = Field(default=None, description="not supported: only null")
    reasoning_effort: Text | None = Field(default=None, description="not supported: only null")
    verbosity: Text | None = Field(default=None, description="not supported: only null")
    web_search_options: dict[str, Any] | None = Field(default=None, description="not supported: only null")
    store: bool | None = Field(default=None, description="completions are never stored: only false")
    service_tier: Text | None = Field(default=None, description='one tier: only "auto" or "default"')

    def _unsupported(self) -> list[str]:
        refused = {
            "tools": bool(self.tools),
            "tool_choice": self.tool_choice not in (None, "none"),
            "functions": bool(self.functions),
            "function_call": self.function_call not in (None, "none"),
            "modalities": self.modalities not in (None, ["text"]),
            "audio": self.audio is not None,
            "prediction": self.prediction is not None,
            "reasoning_effort": self.reasoning_effort is not None,
            "verbosity": self.verbosity is not None,
            "web_search_options": self.web_search_options is not None,
            "store": bool(self.store),
            "service_tier": self.service_tier not in (None, "auto", "default"),
        }
        return [name for name, given in refused.items() if given]


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

    model_config = _REQUEST

    source: Literal["hub", "local"]
    id: Text | None = Field(default=None, min_length=1, description="Hub repo id 'owner/name' (source hub)")
    path: Text | None = Field(
        default=None, min_length=1, description="path under --adapter-root (source local)"
    )
    revision: Text | None = Field(default=None, min_length=1, description="Hub branch, tag or commit")
    subfolder: Text | None = Field(default=None, min_length=1, description="folder inside the Hub repo")

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


# -- images (routes/vision.py; /classify with images takes ClassifyRequest) -------------------------------
class SegmentParameters(BaseModel):
    model_config = _REQUEST

    adapter_id: Text | None = Field(
        default=None, min_length=1, description="segmentation adapter; null = the base head"
    )


class SegmentRequest(BaseModel):
    model_config = _REQUEST

    inputs: Text | list[Text] = Field(description="one base64 image or a list of them")
    parameters: SegmentParameters = Field(default_factory=lambda: SegmentParameters())


class SegmentResult(BaseModel):
    """One image's segmentation: pixel (x, y) of the PNG holds the label index of that pixel."""

    label_map: str = Field(
        description="PNG (8-bit grey, 16-bit past 256 labels), base64; same size as the image"
    )
    width: int
    height: int
    labels: list[str] = Field(description="label names by index (the adapter's id2label)")
