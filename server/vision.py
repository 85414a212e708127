"""Image bases on the server: reading image requests (base64 JSON or multipart uploads), decoding them with
Pillow, the base's own image processor, and label maps as PNG.

An image base (a `*ForImageClassification` or `*ForSemanticSegmentation` checkpoint saved with its image
processor) serves `/classify` with images and `/segment`; it has no tokenizer, so every text route answers
400 naming the base (`ImageBaseTokenization`). Bad images are the request's own failure: not base64, not an
image Pillow can decode, or truncated -> 422; more pixels than `--max-image-pixels` -> 413, checked from the
image header before any pixel is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from .errors import BadRequestError, InvalidInputError, PayloadTooLargeError
from .tokenization import Tokenization

IMAGE_KINDS = ("image-cls", "semantic-seg")
IMAGE_ROUTES = {"image-cls": "POST /classify with images", "semantic-seg": "POST /segment"}
MULTIPART_FIELDS = ("inputs", "adapter_id", "top_k")


class ImageBaseTokenization(Tokenization):
    """The tokenization of an image base: there is none, and every text route says so (400)."""

    def __init__(self, base_name: str, kind: str) -> None:
        self.tokenizer = None
        self.eos_token_ids = set()
        self.special_ids = set()
        self._refusal = (
            f"the served base model ({base_name}) is an image model ({kind}): it takes images, not text, and "
            f"has no tokenizer; use {IMAGE_ROUTES[kind]}"
        )

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        raise BadRequestError(self._refusal)

    def decode(self, ids: Sequence[int]) -> str:
        raise BadRequestError(self._refusal)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        raise BadRequestError(self._refusal)


@dataclass
class ImageRequest:
    """An image request, parsed: the raw image files and the parameters."""

    blobs: list[bytes]
    adapter_id: str | None
    top_k: int | None = None


async def read_json_body(request: Request, model: type[BaseModel]) -> Any:
    """The body validated as `model`, with FastAPI's own error shape (422, or 400 for invalid JSON)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def read_multipart(request: Request, *, with_top_k: bool) -> ImageRequest:
    """Files under `inputs` (one or more), optional text fields `adapter_id` (and `top_k` for /classify)."""
    form = await request.form()
    allowed = MULTIPART_FIELDS if with_top_k else MULTIPART_FIELDS[:2]
    unknown = sorted(set(form.keys()) - set(allowed))
    if unknown:
        raise InvalidInputError(f"unknown multipart field(s) {unknown}; the fields are {list(allowed)}")
    files = form.getlist("inputs")
    if not files or not all(isinstance(f, UploadFile) for f in files):
        raise InvalidInputError(
            "a multipart request carries its images as one or more files in the field 'inputs'"
        )
    blobs = [await f.read() for f in files if isinstance(f, UploadFile)]
    adapter = form.get("adapter_id")
    top_k = form.get("top_k")
    if not (adapter is None or (isinstance(adapter, str) and adapter)):
        raise InvalidInputError("adapter_id must be a non-empty text field")
    if top_k is not None and not (isinstance(top_k, str) and top_k.isdigit() and int(top_k) >= 1):
        raise InvalidInputError(f"top_k must be an integer >= 1, got {top_k!r}")
    return ImageRequest(blobs, adapter, int(top_k) if isinstance(top_k, str) else None)


def decode_base64(inputs: Sequence[str]) -> list[bytes]:
    """Base64 images (a `data:image/...;base64,` URL prefix is allowed) -> bytes; 422 naming the bad one."""
    blobs = []
    for i, text in enumerate(inputs):
        payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
        try:
            blobs.append(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidInputError(
                f"inputs[{i}] is not base64: send each image's file bytes (PNG, JPEG, ...) base64-encoded, or "
                "upload the files as multipart/form-data"
            ) from None
    return blobs


def decode_images(blobs: Sequence[bytes], max_pixels: int) -> list[Image.Image]:
    """Image files -> RGB images. 413 when one has more than `max_pixels` (read from its header, before the
    pixels are decoded), 422 when one is not an image Pillow can decode or is truncated."""
    images = []
    for i, raw in enumerate(blobs):
        try:
            image = Image.open(io.BytesIO(raw))
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLargeError(
                    f"inputs[{i}] is {width}×{height} = {width * height} pixels; at most {max_pixels} are "
                    "accepted (--max-image-pixels): downscale it first"
                )
            image.load()
            images.append(image.convert("RGB"))
        except Image.DecompressionBombError as exc:
            raise PayloadTooLargeError(f"inputs[{i}]: {exc}") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise InvalidInputError(
                f"inputs[{i}] is not an image that can be decoded ({type(exc).__name__}: {exc}); send PNG, "
                "JPEG, WebP, BMP or GIF files"
            ) from None
    return images


def preprocess(processor: Any, images: list[Image.Image]) -> torch.Tensor:
    """(N, 3, H, W) pixel values through the base's own image processor (resize, rescale, normalise)."""
    return processor(images=images, return_tensors="pt")["pixel_values"]


def label_map(processor: Any, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One image's (C, h, w) segmentation logits -> its (H, W) label map at the image's own `size` (W, H), as
    the base's processor post-processes them (upsampled logits, argmax over labels)."""
    width, height = size
    outputs = SimpleNamespace(logits=logits[None].float())
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0]


def png_base64(labels: torch.Tensor) -> str:
    """(H, W) integer labels -> a PNG, base64: 8-bit grey when every label fits, else 16-bit."""
    array = labels.cpu().numpy()
    pixels = array.astype(np.uint8) if array.max(initial=0) < 256 else array.astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
