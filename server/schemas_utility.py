"""Bodies of the utility routes, in the shapes their clients know: `/tokenize` and `/detokenize` (vLLM's),
`/v1/embeddings` (OpenAI's). Strict as every request body here (schemas.py): unknown keys are a 422."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from .schemas import _REQUEST, ChatMessage, Text

TokenId = Annotated[int, Field(ge=0)]


class TokenizeRequest(BaseModel):
    """vLLM's two tokenize bodies in one: `prompt` (a completion) or `messages` (a chat, through the adapter's
    chat template, else the base's)."""

    model_config = _REQUEST

    model: Text | None = Field(default=None, description="an adapter name, or the base model's (default)")
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = Field(
        default=None,
        description="add the tokenizer's special tokens (default: true for prompt, false for messages)",
    )
    add_generation_prompt: bool = Field(
        default=True, description="messages: end with the assistant's turn prompt"
    )
    return_token_strs: bool = Field(default=False, description="also return each token as a string")

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int = Field(description="the most positions one request may take on this server")
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = _REQUEST

    model: Text | None = Field(default=None, description="an adapter name, or the base model's (default)")
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings body: one text, several, or token ids (one list, or one list per input)."""

    model_config = _REQUEST

    model: Text = Field(min_length=1, description="an adapter name, or the base model's name for no adapter")
    input: Text | list[Text] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: little-endian float32 bytes, as OpenAI sends them"
    )
    dimensions: int | None = Field(default=None, ge=1, description="only the model's own width")
    user: Text | None = Field(default=None, description="the end user's id (accepted; not used)")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class EmbedRequest(BaseModel):
    """text-embeddings-inference's `POST /embed` body (what huggingface_hub's `feature_extraction` sends), with
    Swapyard's `adapter_id` (null = the base model) as in /generate's parameters."""

    model_config = _REQUEST

    inputs: Text | list[Text]
    adapter_id: Text | None = None
    normalize: bool = Field(default=True, description="scale each vector to unit length (TEI's default)")
    truncate: bool = Field(default=False, description="cut inputs to --max-input-tokens instead of a 422")
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"
    prompt_name: Text | None = Field(default=None, description="not supported: only null")
    dimensions: int | None = Field(default=None, ge=1, description="only the model's own width")
