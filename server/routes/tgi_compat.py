"""TGI's `POST /`: `/generate_stream` when the body says `"stream": true`, else `/generate`.

huggingface_hub's `InferenceClient(model=URL).text_generation(...)` posts to the URL itself with `stream` in
the body, as text-generation-inference accepts it; this route makes a Swapyard URL work there unchanged.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..deps import EngineDep, SettingsDep
from ..schemas import GenerateRequest
from . import generate

router = APIRouter(tags=["generate"])


@router.post("/", response_model=None)
async def compat_generate(
    body: GenerateRequest, request: Request, settings: SettingsDep, engine: EngineDep
) -> StreamingResponse | JSONResponse:
    """`/generate` or `/generate_stream`, by `stream` (default: not streamed)."""
    if body.stream:
        return await generate.generate_stream(body, settings, engine)
    answer = await generate.generate(body, request, settings, engine)
    return JSONResponse(answer.model_dump(exclude_none=True))
