"""Image bases: `/classify` with images (called by routes/classify.py) and `POST /segment`.

Both take images as base64 in JSON (`{"inputs": "<base64>" | [...], "parameters": {"adapter_id": ...}}`) or
as files in a multipart upload (field `inputs`, text fields `adapter_id`, `top_k`). Images are decoded with
Pillow and processed by the base's own image processor off the event loop; the engine runs them as one
classification job (its rows may share a step with other requests' images, each row its own adapter).
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel

from ..deps import EngineDep, SettingsDep
from ..engine import Engine
from ..engine.types import release_lease
from ..errors import InvalidInputError
from ..generation import check_kind
from ..schemas import ClassifyRequest, LabelScore, SegmentRequest, SegmentResult
from ..settings import Settings
from ..vision import (
    ImageRequest,
    decode_base64,
    decode_images,
    is_multipart,
    label_map,
    png_base64,
    preprocess,
    read_json_body,
    read_multipart,
)

router = APIRouter(tags=["images"])


def request_body_docs(json_model: type[BaseModel], *, with_top_k: bool) -> dict[str, Any]:
    """The OpenAPI request body of an image route (JSON schema of `json_model`, or a multipart upload)."""
    schema = json_model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    fields: dict[str, Any] = {
        "inputs": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "adapter_id": {"type": "string", "minLength": 1},
    }
    if with_top_k:
        fields["top_k"] = {"type": "integer", "minimum": 1}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline(schema)},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": fields, "required": ["inputs"]}
                },
            },
        }
    }


async def _read(request: Request, json_model: type[BaseModel], *, with_top_k: bool) -> ImageRequest:
    if is_multipart(request):
        return await read_multipart(request, with_top_k=with_top_k)
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise InvalidInputError(
            "a form without files: upload the images as multipart/form-data files in the field 'inputs', or "
            "send them base64 in JSON"
        )
    body = await read_json_body(request, json_model)
    inputs = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    if not inputs or any(text == "" for text in inputs):
        raise InvalidInputError("inputs must be a base64 image or a non-empty list of them")
    return ImageRequest(
        decode_base64(inputs), body.parameters.adapter_id, getattr(body.parameters, "top_k", None)
    )


async def _run(
    settings: Settings, engine: Engine, parsed: ImageRequest
) -> tuple[list[Any], list[torch.Tensor], dict[int, str]]:
    """Decode and process the images, run them under the adapter's lease: (images, per-image logits, id2label)."""
    if len(parsed.blobs) > settings.max_classify_inputs:
        raise InvalidInputError(
            f"{len(parsed.blobs)} images given; at most {settings.max_classify_inputs} per request "
            "(--max-classify-inputs)"
        )
    images = await asyncio.to_thread(decode_images, parsed.blobs, settings.max_image_pixels)
    pixels = await asyncio.to_thread(preprocess, engine.base.image_processor, images)
    lease = await engine.registry.acquire(parsed.adapter_id)  # 404 if unknown; released after the job
    id2label = engine.registry.id2label(lease)
    try:
        future = engine.submit_classify(
            [], parsed.adapter_id, asyncio.get_running_loop(), lease=lease, pixel_values=pixels
        )
    except BaseException:
        release_lease(lease)
        raise
    return images, await future, id2label


def ranked_labels(
    engine: Engine, id2label: dict[int, str], logits: list[torch.Tensor], top_k: int | None
) -> list[list[LabelScore]]:
    """Per input its labels by score (softmax of its (C,) logits), the best `top_k` (all when None)."""
    results = []
    for row_logits in logits:
        scores = torch.softmax(row_logits, dim=-1).tolist()
        labels = engine.registry.labels(id2label, len(scores))
        ranked = sorted(zip(labels, scores), key=lambda pair: -pair[1])
        if top_k is not None:
            ranked = ranked[:top_k]
        results.append([LabelScore(label=label, score=score) for label, score in ranked])
    return results


async def classify_images(request: Request, settings: Settings, engine: Engine) -> list[list[LabelScore]]:
    """`/classify` on an image-classification base."""
    parsed = await _read(request, ClassifyRequest, with_top_k=True)
    _, logits, id2label = await _run(settings, engine, parsed)
    return ranked_labels(engine, id2label, logits, parsed.top_k)


@router.post(
    "/segment",
    response_model=list[SegmentResult],
    openapi_extra=request_body_docs(SegmentRequest, with_top_k=False),
)
async def segment(request: Request, settings: SettingsDep, engine: EngineDep) -> list[SegmentResult]:
    """Per image its label map (PNG, base64, the image's own size) and the adapter's label names."""
    check_kind(engine, "semantic-seg")
    parsed = await _read(request, SegmentRequest, with_top_k=False)
    images, logits, id2label = await _run(settings, engine, parsed)
    processor = engine.base.image_processor

    def encode() -> list[SegmentResult]:
        results = []
        for image, row in zip(images, logits):
            labels = label_map(processor, row, image.size)
            names = engine.registry.labels(id2label, int(row.shape[0]))
            results.append(
                SegmentResult(
                    label_map=png_base64(labels), width=image.size[0], height=image.size[1], labels=names
                )
            )
        return results

    return await asyncio.to_thread(encode)
