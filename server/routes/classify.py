"""`POST /classify`: labels and scores per input, from the adapter's own head and `id2label`."""

from __future__ import annotations

import asyncio

import torch
from fastapi import APIRouter

from ..deps import EngineDep, SettingsDep
from ..engine.types import release_lease
from ..errors import InvalidInputError
from ..generation import check_kind
from ..schemas import ClassifyRequest, LabelScore

router = APIRouter(tags=["classify"])


@router.post("/classify", response_model=list[list[LabelScore]])
async def classify(body: ClassifyRequest, settings: SettingsDep, engine: EngineDep) -> list[list[LabelScore]]:
    """Per input, `{label, score}` sorted by score (softmax over the adapter head's labels)."""
    check_kind(engine, "seq-cls")
    adapter = body.parameters.adapter_id
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    if len(texts) > settings.max_classify_inputs:
        raise InvalidInputError(
            f"{len(texts)} inputs given; at most {settings.max_classify_inputs} per request "
            "(--max-classify-inputs)"
        )
    ids = [engine.tok.encode(t) for t in texts]
    # Checked again, with the positions the adapter adds, once its lease is held (submit_classify); here
    # first, so that an over-long input never waits for an adapter to load.
    engine.limits.check_inputs([len(row) for row in ids])
    lease = await engine.registry.acquire(adapter)  # 404 if unknown; the engine releases it after the job
    id2label = engine.registry.id2label(lease)
    try:
        future = engine.submit_classify(ids, adapter, asyncio.get_running_loop(), lease=lease)
    except BaseException:
        release_lease(lease)
        raise
    logits = await future
    results = []
    for row_logits in logits:
        scores = torch.softmax(row_logits, dim=-1).tolist()
        labels = engine.registry.labels(id2label, len(scores))
        ranked = sorted(zip(labels, scores), key=lambda pair: -pair[1])
        if body.parameters.top_k is not None:
            ranked = ranked[: body.parameters.top_k]
        results.append([LabelScore(label=label, score=score) for label, score in ranked])
    return results
