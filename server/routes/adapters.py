"""Adapter management, behind the admin key (server/auth.py): list, inspect, upload, (re)load, delete.

    GET    /v1/adapters                  every registered adapter and its tier
    GET    /v1/adapters/{name}           one adapter (404 unknown)
    POST   /v1/adapters                  multipart: name, config (adapter_config.json), weights (safetensors) -> 201
    POST   /v1/adapters/{name}/load      {"source": "hub"|"local", "id"|"path", "revision"}
    DELETE /v1/adapters/{name}[?wait=true]   409 while requests use it, unless wait

Uploads and loads are validated completely before they replace anything: a bad file is a 4xx and the
adapter's current version keeps serving. An upload's body is read only after the admin key has been checked
(the route parses its multipart form itself: FastAPI reads form parameters before running dependencies). Re-uploading a name serves the new weights to new requests while
running ones finish on the old.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import UploadFile

from ..auth import require_admin
from ..deps import EngineDep
from ..errors import InvalidInputError
from ..schemas import AdapterRecord, AdapterRecordList, DeletedAdapter, LoadAdapterRequest
from ..store import AdapterInfo, UploadTooLargeError

router = APIRouter(prefix="/v1/adapters", tags=["adapters"], dependencies=[Depends(require_admin)])


def _record(info: AdapterInfo) -> AdapterRecord:
    return AdapterRecord(**vars(info))


async def _read(upload: UploadFile, limit: int) -> bytes:
    """The file's bytes, refusing more than `limit` without reading them all."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise UploadTooLargeError(
            f"{upload.filename or 'the file'} is larger than {limit} bytes (--max-adapter-bytes)"
        )
    return data


@router.get("", response_model=AdapterRecordList)
async def list_adapters(engine: EngineDep) -> AdapterRecordList:
    return AdapterRecordList(data=[_record(i) for i in engine.registry.infos()])


@router.get("/{name}", response_model=AdapterRecord)
async def get_adapter(name: str, engine: EngineDep) -> AdapterRecord:
    return _record(engine.registry.info(name))


_UPLOAD_FIELDS = {
    "name": {"type": "string", "description": "the adapter's name"},
    "config": {"type": "string", "format": "binary", "description": "adapter_config.json"},
    "weights": {"type": "string", "format": "binary", "description": "adapter_model.safetensors"},
}
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": list(_UPLOAD_FIELDS), "properties": _UPLOAD_FIELDS}
            }
        },
    }
}


def _form_error(problem: str) -> InvalidInputError:
    return InvalidInputError(
        f"{problem}: POST /v1/adapters takes multipart/form-data with a text field `name` and the files "
        "`config` (adapter_config.json) and `weights` (adapter_model.safetensors)."
    )


@router.post("", response_model=AdapterRecord, status_code=201, openapi_extra=_UPLOAD_BODY)
async def upload_adapter(request: Request, engine: EngineDep) -> AdapterRecord:
    """Upload an adapter (PEFT files); 201 with its record once it is validated and stored."""
    registry = engine.registry
    limit = registry.max_adapter_bytes
    async with request.form(max_files=2, max_fields=1) as form:  # after require_admin: auth comes first
        missing = [f for f in _UPLOAD_FIELDS if f not in form]
        if missing:
            raise _form_error(f"missing field(s) {missing}")
        name, config, weights = (form[f] for f in _UPLOAD_FIELDS)
        if not isinstance(name, str):
            raise _form_error("`name` must be a text field, not a file")
        if not isinstance(config, UploadFile) or not isinstance(weights, UploadFile):
            raise _form_error("`config` and `weights` must be files")
        registry.check_name(name)
        config_bytes = await _read(config, limit)
        weights_bytes = await _read(weights, limit)
    return _record(await registry.upload(name, config_bytes, weights_bytes))


@router.post("/{name}/load", response_model=AdapterRecord)
async def load_adapter(name: str, body: LoadAdapterRequest, engine: EngineDep) -> AdapterRecord:
    """(Re)load `name` from the Hub or the adapter root, validated before it replaces the current version."""
    if body.source == "hub":
        assert body.id is not None
        info = await engine.registry.load(
            name, hub_id=body.id, revision=body.revision, subfolder=body.subfolder
        )
    else:
        assert body.path is not None
        info = await engine.registry.load(name, path=body.path)
    return _record(info)


@router.delete("/{name}", response_model=DeletedAdapter)
async def delete_adapter(
    name: str,
    engine: EngineDep,
    wait: Annotated[bool, Query(description="wait for running requests instead of answering 409")] = False,
) -> DeletedAdapter:
    """Unregister and unload `name`: 409 while requests use it, unless `wait=true`."""
    await engine.registry.delete(name, wait=wait)
    return DeletedAdapter(name=name)
