"""`POST /classify`: labels and scores per input, from the adapter's own head and `id2label`.

Texts on a sequence-classification base; on an image-classification base, images — base64 in the same JSON
body, or files in a multipart upload (routes/vision.py). The body is read here rather than declared as a
parameter because one route takes both content types; its schema is still the documented one.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ..deps import EngineDep, SettingsDep
from ..engine.types import release_lease
from ..errors import InvalidInputError
from ..generation import check_kind
from ..schemas import ClassifyRequest, LabelScore
from ..vision import is_multipart, read_json_body
from .vision import classify_images, ranked_labels, request_body_docs

router = APIRouter(tags=["classify"])


@router.post(
    "/classify",
    response_model=list[list[LabelScore]],
    openapi_extra=request_body_docs(ClassifyRequest, with_top_k=True),
)
async def classify(request: Request, settings: SettingsDep, engine: EngineDep) -> list[list[LabelScore]]:
    """Per input, `{label, score}` sorted by score (softmax over the adapter head's labels)."""
    if engine.base.kind == "image-cls":
        return await classify_images(request, settings, engine)
    check_kind(engine, "seq-cls", "image-cls")
    if is_multipart(request):
        raise InvalidInputError(
            "multipart uploads carry images, and the served base model is a text classifier; send "
            '{"inputs": text or [texts]} as JSON'
        )
    body: ClassifyRequest = await read_json_body(request, ClassifyRequest)
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
    return ranked_labels(engine, id2label, logits, body.parameters.top_k)
