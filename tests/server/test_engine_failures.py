"""A failing model step never loses a request: every row running or admitted in that step gets an error
response, and the server keeps serving."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_helpers import prompt

from server.app import create_app
from server.settings import Settings


def _post(client: TestClient, out: dict, key: str, max_new_tokens: int) -> None:
    body = {"inputs": prompt(3), "parameters": {"adapter_id": None, "max_new_tokens": max_new_tokens}}
    out[key] = client.post("/generate", json=body)


@pytest.mark.timeout(120)  # a lost request hangs its client: fail by timeout rather than never
def test_a_decode_failure_fails_running_and_newly_admitted_rows(
    llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(Settings(base_model=str(llama_dir), max_batch_size=8))
    with TestClient(app, raise_server_exceptions=False) as client:
        engine = app.state.swapyard.engine
        # One step that both runs the first row and admits the second fails (every model call of that step:
        # the engine retries a failed step row by row); the server goes on with the next.
        armed = {"mixed_step": False, "fired": False, "step": 0, "fired_at": -1}

        def failing(call):
            def wrapped(*args, **kwargs):
                if armed["mixed_step"] and armed["fired_at"] in (-1, armed["step"]):
                    armed["fired"], armed["fired_at"] = True, armed["step"]
                    raise RuntimeError("injected device error")
                return call(*args, **kwargs)

            return wrapped

        schedule = engine._schedule_paged

        def spy_schedule(batch):
            step, jobs = schedule(batch)
            admitted = {id(row) for row in step.admitted}
            armed["step"] += 1
            armed["mixed_step"] = bool(admitted) and any(id(c.row) not in admitted for c in step.chunks)
            return step, jobs

        monkeypatch.setattr(engine, "_schedule_paged", spy_schedule)
        monkeypatch.setattr(engine.model, "paged_step", failing(engine.model.paged_step))

        out: dict = {}
        first = threading.Thread(target=_post, args=(client, out, "running", 400))
        first.start()
        deadline = time.monotonic() + 20
        while not engine._batch.rows and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine._batch.rows, "the first request never started decoding"
        second = threading.Thread(target=_post, args=(client, out, "admitted", 5))
        second.start()
        first.join(timeout=30)
        second.join(timeout=30)
        assert not first.is_alive() and not second.is_alive(), "a request was lost (no response)"
        assert armed["fired"], "the injected failure never ran in a step that also admitted a row"
        for key in ("running", "admitted"):
            assert out[key].status_code >= 500, (key, out[key].status_code, out[key].text)
            assert "RuntimeError" in out[key].json()["error"]  # internals are not echoed to clients
        after = client.post("/generate", json={"inputs": prompt(4), "parameters": {"max_new_tokens": 3}})
        assert after.status_code == 200, after.text
