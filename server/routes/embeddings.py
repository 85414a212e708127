"""`POST /v1/embeddings` (OpenAI's shape): pooled last hidden states under the adapter named by `model`.

Each input is one row of the engine's job batch (`Engine.submit_embed`, batched with other requests' rows);
the pooling is the base kind's (CLS for encoders, the last token for causal LMs, the encoder's mean for
T5: adapters_core/multi/pooling.py) unless `--embedding-pooling` names another. Vectors are not normalized.
`encoding_format: base64` sends little-endian float32 bytes, as OpenAI does (its Python client asks for it).
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import torch
from fastapi import APIRouter

from ..deps import EngineDep, SettingsDep
from ..engine import Engine
from ..engine.types import release_lease
from ..errors import InvalidInputError, UnsupportedParameterError
from ..schemas_utility import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EmbedRequest
from ..settings import Settings
from .tokenize import check_token_ids

router = APIRouter(tags=["embeddings"])


def _rows(
    given: str | list[str] | list[int] | list[list[int]], engine: Engine, settings: Settings
) -> list[list[int]]:
    """Token ids per input (texts get the tokenizer's special tokens, as the model was trained with)."""
    rows: list[list[int]] = []
    if isinstance(given, str):
        rows = [engine.tok.encode(given)]
    elif given and all(isinstance(x, int) for x in given):
        rows = [[int(x) for x in given]]  # type: ignore[arg-type]  # one token-id list
    else:
        for x in given:
            rows.append(engine.tok.encode(x) if isinstance(x, str) else list(x))  # type: ignore[arg-type]
    if not rows:
        raise InvalidInputError("input is empty; give a text, a list of texts, or token ids")
    if len(rows) > settings.max_embedding_inputs:
        raise InvalidInputError(
            f"{len(rows)} inputs given; at most {settings.max_embedding_inputs} per request (--max-embedding-inputs)"
        )
    for i, row in enumerate(rows):
        name = f"input {i}" if len(rows) > 1 else "input"
        if not row:
            raise InvalidInputError(f"{name} has no tokens; give non-empty text or token ids")
        check_token_ids(engine, row, name)
    return rows


def embedding_width(engine: Engine) -> int:
    config = engine.base.config
    return int(getattr(config, "hidden_size", None) or config.d_model)


def _check_dimensions(engine: Engine, dimensions: int | None) -> None:
    width = embedding_width(engine)
    if dimensions is not None and dimensions != width:
        raise InvalidInputError(
            f"dimensions {dimensions}: this model's embeddings have {width}; leave `dimensions` out"
        )


async def embed(
    engine: Engine, settings: Settings, adapter: str | None, rows: list[list[int]]
) -> list[torch.Tensor]:
    """One pooled vector (d,) per row under `adapter`, through the engine's job batch."""
    # Checked again with the positions the adapter adds once its lease is held (submit_embed).
    engine.limits.check_inputs([len(row) for row in rows])
    lease = await engine.registry.acquire(adapter)  # 404 unknown; the engine releases it after the job
    pooling = None if settings.embedding_pooling == "auto" else settings.embedding_pooling
    try:
        future = engine.submit_embed(rows, adapter, asyncio.get_running_loop(), lease=lease, pooling=pooling)
    except BaseException:
        release_lease(lease)
        raise
    return await future


@router.post("/v1/embeddings", response_model=EmbeddingResponse, tags=["openai"])
async def embeddings(body: EmbeddingRequest, settings: SettingsDep, engine: EngineDep) -> EmbeddingResponse:
    """One vector per input, under adapter `model` (the base model's name: no adapter)."""
    _check_dimensions(engine, body.dimensions)
    rows = _rows(body.input, engine, settings)
    vectors = await embed(engine, settings, engine.registry.resolve_model(body.model), rows)
    data = [
        Embedding(index=i, embedding=_encode(vector.numpy(), body.encoding_format))
        for i, vector in enumerate(vectors)
    ]
    tokens = sum(len(row) for row in rows)
    return EmbeddingResponse(
        data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )


@router.post("/embed", response_model=list[list[float]])
async def tei_embed(body: EmbedRequest, settings: SettingsDep, engine: EngineDep) -> list[list[float]]:
    """text-embeddings-inference's route: a vector per input, unit length unless `normalize` is false."""
    if body.prompt_name is not None:
        raise UnsupportedParameterError("`prompt_name` is not supported by this server; leave it out")
    _check_dimensions(engine, body.dimensions)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    rows = [engine.tok.encode(text) for text in texts]
    if body.truncate:
        keep = engine.limits.max_input_tokens
        left = body.truncation_direction.lower() == "left"
        rows = [row[-keep:] if left else row[:keep] for row in rows]
    vectors = await embed(engine, settings, body.adapter_id, _rows(rows, engine, settings))
    if body.normalize:
        vectors = [torch.nn.functional.normalize(v, dim=0) for v in vectors]
    return [v.tolist() for v in vectors]


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
