"""THE BASELINE: transformers + PEFT's mixed-batch `adapter_names` behind text-generation-inference's HTTP shape.

    python -m bench.serving.peft_server --base-model DIR --adapter-dir DIR [--n-adapters N] --port P

What a team without a multi-adapter server would run: the base in transformers, every adapter loaded into one
`PeftModel` (`load_adapter`), and whatever requests are waiting batched into one
`model.generate(..., adapter_names=[one per row])` (PEFT's mixed-adapter batch; `"__base__"` for a row
without adapter). It is static batching: a batch runs until its longest request is done, and requests that
arrive meanwhile wait for the next batch. Tokens stream back as they are made (a `BaseStreamer` that hands
each row its token), so time to first token is measured the same way as for Swapyard.

Routes, as Swapyard's: `POST /generate_stream` (Server-Sent Events, one per token, the last with
`generated_text`), `POST /generate`, `GET /health`, `GET /ready`. An unknown adapter is a 404 with
`{"error", "error_type"}`, never the base model. This file is benchmark code, not part of Swapyard: it is
the only place in the benchmark that imports `peft`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

log = logging.getLogger("bench.peft_server")
BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


@dataclass
class Job:
    """One request: its prompt ids, adapter, budget, and where its events go (an asyncio queue)."""

    ids: list[int]
    adapter: str | None
    max_new_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    tokens: list[int] = field(default_factory=list)

    def push(self, event: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class RowStreamer:
    """transformers' streamer interface (`put`, `end`) for a batch: row i's new token goes to job i.

    `generate` first puts the prompt (2-D), then one tensor of shape (B,) per step. A row that reached its own
    `max_new_tokens` gets its last event and is ignored afterwards (the batch runs on for the longest one).
    """

    def __init__(self, jobs: Sequence[Job], decode: Any) -> None:
        self.jobs = jobs
        self.decode = decode
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for job, token in zip(self.jobs, value.reshape(len(self.jobs), -1)[:, -1].tolist()):
            if len(job.tokens) >= job.max_new_tokens:
                continue
            job.tokens.append(int(token))
            event: dict[str, Any] = {
                "index": len(job.tokens) - 1,
                "token": {"id": int(token), "text": self.decode([int(token)])},
            }
            if len(job.tokens) == job.max_new_tokens:
                event["generated_text"] = self.decode(job.tokens)
            job.push(event)

    def end(self) -> None:
        pass


class Batcher:
    """One thread runs the model: it takes every waiting job (up to `max_batch_size`) into one generate."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, max_batch_size: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_batch_size = max_batch_size
        self.has_adapters = hasattr(model, "peft_config")
        self._waiting: list[Job] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="peft-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self._cv:
            self._waiting.append(job)
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stop or bool(self._waiting))
                if self._stop:
                    return
                batch = self._waiting[: self.max_batch_size]
                del self._waiting[: len(batch)]
            try:
                self._generate(batch)
            except Exception as exc:  # one batch's failure is its requests' alone
                log.exception("batch of %d failed", len(batch))
                for job in batch:
                    job.push({"error": f"generation failed: {exc}", "error_type": "generation_error"})

    @torch.no_grad()
    def _generate(self, batch: list[Job]) -> None:
        width = max(len(j.ids) for j in batch)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(j.ids)) + j.ids for j in batch], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in batch], device=self.device
        )
        per_row = {"adapter_names": [j.adapter or BASE for j in batch]} if self.has_adapters else {}
        self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(j.max_new_tokens for j in batch),
            do_sample=False,
            pad_token_id=pad,
            streamer=RowStreamer(batch, self.tokenizer.decode),
            **per_row,
        )


def load_model(base_model: str, adapters: list[tuple[str, str]], device: str, dtype: str) -> Any:
    """The base with every adapter loaded into one PeftModel (the first by from_pretrained)."""
    import peft
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=getattr(torch, dtype)).to(device)
    if not adapters:
        return base.eval()
    first, path = adapters[0]
    model = peft.PeftModel.from_pretrained(base, path, adapter_name=first)
    for name, path in adapters[1:]:
        model.load_adapter(path, adapter_name=name)
    return model.eval()


def adapter_folders(directory: str | None, limit: int | None) -> list[tuple[str, str]]:
    """(name, path) of the sub-folders of `directory` holding an adapter_config.json, sorted, first `limit`."""
    if directory is None:
        return []
    found = sorted(p for p in Path(directory).iterdir() if (p / "adapter_config.json").is_file())
    return [(p.name, str(p)) for p in found[:limit]]


def create_app(batcher: Batcher, adapter_names: set[str]) -> FastAPI:
    app = FastAPI(title="PEFT baseline (benchmark only)")
    tok = batcher.tokenizer

    def error(status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": message, "error_type": kind}, status_code=status)

    def parse(body: dict[str, Any]) -> Job | JSONResponse:
        params = body.get("parameters") or {}
        if not isinstance(body.get("inputs"), str):
            return error(422, "`inputs` must be a string", "validation")
        adapter = params.get("adapter_id")
        if adapter is not None and adapter not in adapter_names:
            return error(404, f"adapter {adapter!r} is not loaded in the PEFT baseline", "adapter_not_found")
        max_new = int(params.get("max_new_tokens") or 20)
        ids = list(tok(body["inputs"], add_special_tokens=False)["input_ids"])
        if not ids:
            return error(422, "`inputs` has no tokens", "validation")
        return Job(ids, adapter, max_new, asyncio.get_running_loop())

    async def events(job: Job) -> AsyncIterator[dict[str, Any]]:
        batcher.submit(job)
        while True:
            event = await job.events.get()
            yield event
            if "error" in event or "generated_text" in event:
                return

    @app.post("/generate_stream")
    async def generate_stream(request: Request) -> Any:
        job = parse(await request.json())
        if isinstance(job, JSONResponse):
            return job

        async def sse() -> AsyncIterator[bytes]:
            async for event in events(job):
                yield f"data:{json.dumps(event)}\n\n".encode()

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/generate")
    async def generate(request: Request) -> Any:
        job = parse(await request.json())
        if isinstance(job, JSONResponse):
            return job
        last: dict[str, Any] = {}
        async for event in events(job):
            last = event
        if "error" in last:
            return error(500, last["error"], last["error_type"])
        return {"generated_text": last["generated_text"]}

    @app.get("/health")
    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving.peft_server", description=__doc__)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--adapter-dir", help="sub-folders with adapter_config.json are the adapters")
    parser.add_argument("--n-adapters", type=int, help="load only the first N (sorted by name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import uvicorn
    from transformers import AutoTokenizer

    adapters = adapter_folders(args.adapter_dir, args.n_adapters)
    model = load_model(args.base_model, adapters, args.device, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    batcher = Batcher(model, tokenizer, torch.device(args.device), args.max_batch_size)
    batcher.start()
    try:
        uvicorn.run(
            create_app(batcher, {name for name, _ in adapters}),
            host=args.host,
            port=args.port,
            log_level="warning",
        )
    finally:
        batcher.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
