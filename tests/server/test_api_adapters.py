"""Adapter management over HTTP (the real app in process): upload → generate → re-upload → generate the new
output; a request running during a re-upload finishes on the version it started with; delete in use → 409
while the request completes; bad uploads and loads get their 4xx and the server keeps serving."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load, save
from serve_helpers import prompt, reference_tokens
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters_core.multi import MultiAdapterModel
from server.app import create_app
from server.settings import Settings
from server.store import uploads

ADMIN = {"Authorization": "Bearer admin-secret"}
NEW = 6
LIMIT = 1 << 20  # --max-adapter-bytes of these tests (the PEFT files are ~100 KiB)


def _files(path: Path) -> tuple[bytes, bytes]:
    return (path / "adapter_config.json").read_bytes(), (path / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def env(
    llama_dir: Path, causal_adapters: dict[str, Path], tmp_path_factory
) -> Iterator[tuple[TestClient, Path]]:
    root = tmp_path_factory.mktemp("adapter-root")
    shutil.copytree(causal_adapters["ia3"], root / "sub" / "ia3")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(causal_adapters["lora4"], outside / "secret")
    os.symlink(outside / "secret", root / "escape")
    settings = Settings(
        base_model=str(llama_dir),
        admin_key="admin-secret",
        uploads_dir=str(tmp_path_factory.mktemp("uploads")),
        adapter_root=str(root),
        hub_adapter_owners="acme",
        max_adapter_bytes=LIMIT,
        max_adapter_rank=8,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, root


@pytest.fixture(scope="module")
def oracle(llama_dir: Path, causal_adapters: dict[str, Path]) -> tuple[MultiAdapterModel, object]:
    multi = MultiAdapterModel(AutoModelForCausalLM.from_pretrained(llama_dir))
    for name in ("lora4", "lora8", "ia3"):
        multi.add(name, str(causal_adapters[name]))
    return multi, AutoTokenizer.from_pretrained(llama_dir)


def _upload(client: TestClient, name: str, files: tuple[bytes, bytes]):
    return client.post(
        "/v1/adapters",
        data={"name": name},
        files={
            "config": ("adapter_config.json", files[0]),
            "weights": ("adapter_model.safetensors", files[1]),
        },
        headers=ADMIN,
    )


def _tokens(client: TestClient, adapter: str, text: str) -> list[int]:
    body = {"inputs": text, "parameters": {"adapter_id": adapter, "max_new_tokens": NEW, "details": True}}
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()["details"]["tokens"]]


def _in_background(client: TestClient, adapter: str, text: str, out: list) -> threading.Thread:
    """A /generate in a thread; its response lands in `out` (asserted by the test, not in the thread)."""
    body = {"inputs": text, "parameters": {"adapter_id": adapter, "max_new_tokens": NEW, "details": True}}
    thread = threading.Thread(target=lambda: out.append(client.post("/generate", json=body)))
    thread.start()
    return thread


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()["details"]["tokens"]]


def _expected(oracle, adapter: str, text: str) -> list[int]:
    multi, tok = oracle
    return reference_tokens(multi, tok, text, adapter, NEW)[:NEW]


def _wait_until(check, what: str, timeout: float = 60.0) -> None:
    """Poll `check` until true; the bound is a safety net against a hang, not a timing assumption."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened within {timeout} s")
        time.sleep(0.01)


def test_upload_generate_reupload_generate(env, oracle, causal_adapters) -> None:
    client, _ = env
    text = prompt(40)
    first = _upload(client, "swap", _files(causal_adapters["lora4"]))
    assert first.status_code == 201, first.text
    assert (
        first.json()["method"] == "LORA" and first.json()["rank"] == 4 and first.json()["source"] == "upload"
    )
    assert _tokens(client, "swap", text) == _expected(oracle, "lora4", text)

    second = _upload(client, "swap", _files(causal_adapters["lora8"]))
    assert second.status_code == 201 and second.json()["content_hash"] != first.json()["content_hash"]
    assert _tokens(client, "swap", text) == _expected(oracle, "lora8", text)

    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert cards["swap"]["content_hash"] == second.json()["content_hash"]
    assert (
        cards["swap"]["tier"] == "device" and cards["swap"]["rank"] == 8 and cards["swap"]["size_bytes"] > 0
    )
    listed = {a["name"]: a for a in client.get("/v1/adapters", headers=ADMIN).json()["data"]}
    assert listed["swap"]["hits"] == 2 and listed["swap"]["leases"] == 0


def test_running_request_keeps_its_version_across_a_reupload(env, oracle, causal_adapters) -> None:
    client, _ = env
    text = prompt(41)
    assert _upload(client, "hot", _files(causal_adapters["lora4"])).status_code == 201
    _tokens(client, "hot", text)  # resident now
    engine = client.app.state.swapyard.engine
    results: list = []
    with engine.hold() as held:  # no step runs: the request below is queued and holds its lease, nothing more
        running = _in_background(client, "hot", text, results)
        held.wait_queued(1)
        assert _upload(client, "hot", _files(causal_adapters["lora8"])).status_code == 201
    running.join(30)
    assert [_ids(r) for r in results] == [_expected(oracle, "lora4", text)]  # the version it started with
    assert _tokens(client, "hot", text) == _expected(oracle, "lora8", text)  # new requests: the new one
    # The old version unloads once its last lease ends (on the store's device thread).
    _wait_until(
        lambda: len([k for k in engine.model.adapters if k.startswith("hot@")]) == 1,
        "the old version's unload",
    )


def test_delete_in_use_is_409_and_the_request_completes(env, oracle, causal_adapters) -> None:
    client, _ = env
    text = prompt(42)
    assert _upload(client, "busy", _files(causal_adapters["lora4"])).status_code == 201
    _tokens(client, "busy", text)
    engine = client.app.state.swapyard.engine
    results: list = []
    deleted: list[int] = []
    with engine.hold() as held:
        running = _in_background(client, "busy", text, results)
        held.wait_queued(1)
        conflict = client.delete("/v1/adapters/busy", headers=ADMIN)
        assert conflict.status_code == 409 and conflict.json()["error_type"] == "conflict"
        waiting = threading.Thread(
            target=lambda: deleted.append(
                client.delete("/v1/adapters/busy?wait=true", headers=ADMIN).status_code
            )
        )
        waiting.start()
        # With wait=true the name is unregistered at once, then the delete waits for the running request's
        # lease, which cannot end while no step runs.
        _wait_until(
            lambda: client.get("/v1/adapters/busy", headers=ADMIN).status_code == 404, "the delete's start"
        )
        assert waiting.is_alive() and not results
    running.join(30)
    waiting.join(30)
    assert [_ids(r) for r in results] == [_expected(oracle, "lora4", text)] and deleted == [200]
    assert client.get("/v1/adapters/busy", headers=ADMIN).status_code == 404
    gone = client.post("/generate", json={"inputs": text, "parameters": {"adapter_id": "busy"}})
    assert gone.status_code == 404  # never answered by the base model


def _pickled(files: tuple[bytes, bytes]) -> bytes:
    buf = io.BytesIO()
    torch.save(load(files[1]), buf)
    return buf.getvalue()


def _nan(files: tuple[bytes, bytes]) -> bytes:
    state = load(files[1])
    next(iter(state.values())).fill_(float("nan"))
    return save(state)


def _wrong_base(files: tuple[bytes, bytes]) -> bytes:
    return save({k: v[:, :-1].contiguous() if "lora_A" in k else v for k, v in load(files[1]).items()})


def _config(**changes):
    """An edit of the config: json.dumps writes float('nan') as the literal NaN, as a hostile client might."""
    return lambda f: json.dumps({**json.loads(f[0]), **changes}).encode()


def _b_times_1e30(files: tuple[bytes, bytes]) -> bytes:
    state = load(files[1])
    key = next(k for k in sorted(state) if "layers.1.self_attn.v_proj.lora_B" in k)
    state[key] = state[key] * 1e30  # finite, but the layer's outputs overflow once normalised
    return save(state)


def _without_layer1_v(files: tuple[bytes, bytes]) -> bytes:
    return save({k: v for k, v in load(files[1]).items() if "layers.1.self_attn.v_proj" not in k})


BAD = {
    "pickle": (lambda f: f[0], _pickled, 422),
    "corrupt": (lambda f: f[0], lambda f: f[1][: len(f[1]) // 2], 422),
    "nan": (lambda f: f[0], _nan, 422),
    "wrong_base": (lambda f: f[0], _wrong_base, 422),
    "bad_config": (lambda f: b"{oops", lambda f: f[1], 422),
    "oversized": (lambda f: f[0], lambda f: b"\0" * (LIMIT + 1), 413),
    "alpha_nan": (_config(lora_alpha=float("nan")), lambda f: f[1], 422),
    "alpha_infinity": (_config(lora_alpha=float("inf")), lambda f: f[1], 422),
    "alpha_1e308": (_config(lora_alpha=1e308), lambda f: f[1], 422),
    "b_times_1e30": (lambda f: f[0], _b_times_1e30, 422),
    "targets_empty": (_config(target_modules=[]), lambda f: f[1], 422),
    "targets_one_of_two": (lambda f: f[0], _without_layer1_v, 422),
    "peft_type_list": (_config(peft_type=["LORA"]), lambda f: f[1], 422),
    "nested_100k": (lambda f: b"[" * 100_000 + b"]" * 100_000, lambda f: f[1], 422),
}
# The field, file or module each refusal names.
NAMED = {
    "pickle": "the weights are a pickle / torch.save file",
    "corrupt": "adapter_model.safetensors is corrupt or truncated",
    "nan": "' contains NaN or Inf values",
    "wrong_base": "lora_A.weight has shape (4, 63) but the base layer has in_features=64",
    "bad_config": "adapter_config.json: not valid UTF-8 JSON",
    "oversized": "adapter_model.safetensors is larger than",
    "alpha_nan": "lora_alpha must be a finite number",
    "alpha_infinity": "lora_alpha must be a finite number",
    "alpha_1e308": "lora_alpha must be a finite number",
    "b_times_1e30": "model.layers.1.self_attn.v_proj: on the validation probe",
    "targets_empty": "target_modules=[] matches no module",
    "targets_one_of_two": "no tensors in the file: model.layers.1.self_attn.v_proj;",
    "peft_type_list": "peft_type must be a string",
    "nested_100k": "nests too deeply",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_uploads_are_refused_and_serving_goes_on(env, oracle, causal_adapters, case) -> None:
    client, _ = env
    files = _files(causal_adapters["lora4"])
    config, weights, status = BAD[case]
    response = _upload(client, f"bad-{case}", (config(files), weights(files)))
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "error_type"}
    assert NAMED[case] in response.json()["error"]  # every case: no empty string that always matches
    assert client.get(f"/v1/adapters/bad-{case}", headers=ADMIN).status_code == 404
    text = prompt(43)
    assert _upload(client, "fine", files).status_code == 201
    assert _tokens(client, "fine", text) == _expected(oracle, "lora4", text)


def test_upload_name_rules(env, causal_adapters, llama_dir) -> None:
    client, _ = env
    files = _files(causal_adapters["lora4"])
    for name in ("../evil", "a/b", ".hidden", "x@y"):
        response = _upload(client, name, files)
        assert response.status_code in (400, 404), (name, response.text)  # 404: a '/' routes elsewhere
    assert _upload(client, str(llama_dir), files).status_code in (400, 409)
    high_rank = _upload(client, "rank16", _files(causal_adapters["lora8"]))
    assert high_rank.status_code == 201  # rank 8 == the maximum here


def test_load_from_the_adapter_root_and_the_hub_policy(env, oracle) -> None:
    client, _ = env
    ok = client.post("/v1/adapters/rooted/load", json={"source": "local", "path": "sub/ia3"}, headers=ADMIN)
    assert ok.status_code == 200, ok.text
    assert ok.json()["source"] == "local:sub/ia3" and ok.json()["method"] == "IA3"
    text = prompt(44)
    assert _tokens(client, "rooted", text) == _expected(oracle, "ia3", text)
    cases = [
        ({"source": "local", "path": "../outside"}, 400),
        ({"source": "local", "path": "/etc"}, 400),
        ({"source": "local", "path": "escape"}, 403),
        ({"source": "local", "path": "nope"}, 404),
        ({"source": "hub", "id": "evil/adapter"}, 403),
        ({"source": "hub", "id": "acme/adapter"}, 404),  # offline, not in the HF cache
        ({"source": "hub", "path": "x"}, 422),
        ({"source": "ftp", "id": "x"}, 422),
    ]
    for body, status in cases:
        response = client.post("/v1/adapters/other/load", json=body, headers=ADMIN)
        assert response.status_code == status, (body, response.text)
    assert client.delete("/v1/adapters/never-was", headers=ADMIN).status_code == 404


def test_a_full_uploads_disk_is_507_and_serving_goes_on(env, oracle, causal_adapters, monkeypatch) -> None:
    client, _ = env
    files = _files(causal_adapters["lora4"])
    assert _upload(client, "kept", files).status_code == 201
    real_write = uploads._write_file

    def full_disk(path: str, data: bytes) -> None:
        if path.endswith(".safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(uploads, "_write_file", full_disk)
    for name in ("kept", "new"):  # a new version of a name, and a new name
        response = _upload(client, name, _files(causal_adapters["lora8"]))
        assert response.status_code == 507, response.text
        assert response.json()["error_type"] == "insufficient_storage"
        assert "uploads disk is full" in response.json()["error"]
    assert client.get("/v1/adapters/new", headers=ADMIN).status_code == 404
    text = prompt(45)
    assert _tokens(client, "kept", text) == _expected(oracle, "lora4", text)  # the old version serves


def test_the_record_shows_the_probe_effect(env, oracle, causal_adapters) -> None:
    client, _ = env
    response = _upload(client, "probed", _files(causal_adapters["lora4"]))
    assert response.status_code == 201, response.text
    expected = oracle[0].adapters["lora4"].parsed.probe.max_delta  # the library's own validation of it
    assert expected is not None and expected > 0.01
    for record in (response.json(), client.get("/v1/adapters/probed", headers=ADMIN).json()):
        assert record["probe_max_delta"] == pytest.approx(expected)


def test_no_route_shows_a_server_path(serve, llama_dir, causal_adapters, tmp_path) -> None:
    operator_dir = causal_adapters["lora4"]
    with serve(
        base_model=str(llama_dir),
        adapters=[f"mine={operator_dir}"],
        adapter_dir=str(operator_dir.parent),
        admin_key="admin-secret",
        uploads_dir=str(tmp_path / "uploads"),
    ) as client:
        assert _upload(client, "sent", _files(operator_dir)).status_code == 201
        models = client.get("/v1/models")
        listed = client.get("/v1/adapters", headers=ADMIN)
        one = client.get("/v1/adapters/mine", headers=ADMIN)
    sources = {card["id"]: card.get("source") for card in models.json()["data"]}
    assert sources["mine"] == "local:lora4" and sources["ia3"] == "local:ia3" and sources["sent"] == "upload"
    assert {a["name"]: a["source"] for a in listed.json()["data"]} == {k: v for k, v in sources.items() if v}
    # The base model is listed by its directory's name, not the path it was loaded from.
    assert models.json()["data"][0]["id"] == llama_dir.name
    for response in (models, listed, one):
        assert str(operator_dir.parent) not in response.text and str(tmp_path) not in response.text
        assert str(llama_dir) not in response.text
