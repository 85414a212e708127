"""Schema-driven fuzzing of every route: schemathesis derives requests from the app's own OpenAPI schema —
boundary values and wrong types, methods and content types (its coverage phase), then generated valid and
invalid ones (fuzzing) — and sends them to the real app in process (tiny Llama, a PEFT-made adapter, keys,
uploads and an adapter root, so the admin routes are reachable too). No answer may be a 5xx, nor a stream
that ends in a server fault; afterwards the server still answers a normal request.

The budget is bounded and deterministic: a fixed number of examples per route and mode, derandomized, no
example database, no shrinking. The same code sends the same requests, in well under a minute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis import GenerationMode
from schemathesis.engine import Status, events, from_schema
from schemathesis.python import asgi

from server.app import create_app
from server.settings import Settings

MAX_EXAMPLES = 10  # per route and mode (the coverage phase adds its own boundary cases)
ADMIN = "admin-secret"
AUTH = {"Authorization": f"Bearer {ADMIN}"}  # the admin key opens the inference routes too
SERVER_FAULTS = ("internal", "engine_error")


def _stream_faults(text: str) -> list[dict[str, Any]]:
    """The events of a Server-Sent Events body that report a server fault."""
    faults = []
    for line in text.splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            event = json.loads(line[5:])
            if isinstance(event, dict) and event.get("error_type") in SERVER_FAULTS:
                faults.append(event)
    return faults


@schemathesis.check
def no_server_fault(ctx: Any, response: Any, case: Any) -> None:
    """A 5xx, or a 200 stream whose events report a server fault, is a failure."""
    content_type = (response.headers.get("content-type") or [""])[0]
    streamed = _stream_faults(response.text) if content_type.startswith("text/event-stream") else []
    if response.status_code >= 500 or streamed:
        raise AssertionError(f"{response.status_code} {streamed or response.text[:300]}")


def _run(schema: Any) -> tuple[list[str], set[str]]:
    """Run schemathesis's engine; (failures with a curl command each, operations fuzzed)."""
    failures, fuzzed = [], set()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.label:
            fuzzed.add(event.label)
            for case_id, checks in event.recorder.checks.items():
                case = event.recorder.cases[case_id].value
                failures += [
                    f"{c.failure_info.failure.message if c.failure_info else c.name}\n    {case.as_curl_command()}"
                    for c in checks
                    if c.status == Status.FAILURE
                ]
        elif isinstance(event, events.FatalError | events.NonFatalError):
            failures.append(
                f"{getattr(event, 'label', '')}: {getattr(event, 'value', event)!r} escaped the app"
            )
    return failures, fuzzed


def test_no_route_answers_5xx_and_the_server_keeps_serving(
    llama_dir: Path, causal_adapters: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "adapter-root"
    root.mkdir()
    app = create_app(
        Settings(
            base_model=str(llama_dir),
            adapters=[f"lora4={causal_adapters['lora4']}"],
            api_key="api-secret",
            admin_key=ADMIN,
            uploads_dir=str(tmp_path / "uploads"),
            adapter_root=str(root),
            allow_hub_adapters=False,  # no network in tests: Hub loads are a 403 here
            max_input_tokens=32,
            max_total_tokens=40,
            max_new_tokens_limit=4,  # valid requests stay cheap
            default_max_new_tokens=2,
            max_request_bytes=1 << 16,
            max_adapter_bytes=1 << 16,
        )
    )
    try:
        # schemathesis runs the app's lifespan (model load, engine thread) on its own event loop.
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
        schema.config.update(headers=AUTH, workers=1, continue_on_failure=True)
        schema.config.checks.update(included_check_names=["no_server_fault"])
        schema.config.phases.update(phases=["coverage", "fuzzing"])
        schema.config.generation.update(
            modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
            max_examples=MAX_EXAMPLES,
            deterministic=True,
            no_shrink=True,
        )
        failures, fuzzed = _run(schema)
        assert not failures, "server faults:\n" + "\n".join(failures)
        every_route = {op.ok().label for op in schema.get_all_operations()}
        assert fuzzed == every_route and "POST /v1/adapters" in fuzzed, every_route - fuzzed
        body = {"inputs": "w1 w2 w3", "parameters": {"max_new_tokens": 2, "details": True}}
        normal = schema["/generate"]["POST"].Case(body=body).call(headers=AUTH)
        assert normal.status_code == 200, normal.text
        assert normal.json()["details"]["generated_tokens"] >= 1
    finally:
        asgi.shutdown_lifespans()  # stop the engine thread this test started
