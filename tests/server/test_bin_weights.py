"""`adapter_model.bin` (PEFT's format before safetensors) on the server: refused by default, read weights-only
from local (and Hub) sources when the operator passes --allow-bin-weights, never from an upload, and a pickle
that would run code is refused without being executed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from serve_helpers import prompt

ADMIN = {"Authorization": "Bearer admin-secret"}
MARKER = Path("/tmp/swapyard-bin-weights-test-ran-code")


def _as_bin(adapter: Path, out: Path) -> Path:
    """The same adapter with its weights saved by torch.save, as PEFT saved them before safetensors."""
    out.mkdir(parents=True)
    shutil.copy(adapter / "adapter_config.json", out / "adapter_config.json")
    torch.save(load_file(adapter / "adapter_model.safetensors"), out / "adapter_model.bin")
    return out


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (MARKER,))


def _generate(client: Any, adapter: str) -> dict[str, Any]:
    body = {"inputs": prompt(3), "parameters": {"adapter_id": adapter, "max_new_tokens": 6, "details": True}}
    answer = client.post("/generate", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _load(client: Any, name: str, path: str) -> Any:
    return client.post(f"/v1/adapters/{name}/load", json={"source": "local", "path": path}, headers=ADMIN)


def test_bin_adapters_need_the_operator_setting(serve, llama_dir, causal_adapters, tmp_path) -> None:
    root = tmp_path / "root"
    _as_bin(causal_adapters["lora4"], root / "old")
    settings = dict(base_model=str(llama_dir), adapter_root=str(root), admin_key="admin-secret")
    with serve(**settings, adapters=[f"new={causal_adapters['lora4']}"]) as client:
        refused = _load(client, "old", "old")
        assert refused.status_code == 422, refused.text
        assert "--allow-bin-weights" in refused.json()["error"]
    with serve(**settings, adapters=[f"new={causal_adapters['lora4']}"], allow_bin_weights=True) as client:
        assert _load(client, "old", "old").status_code == 200
        # the .bin serves exactly what the same weights serve from safetensors, and they are not the base's
        assert _generate(client, "old") == _generate(client, "new")
        base = client.post("/generate", json={"inputs": prompt(3), "parameters": {"max_new_tokens": 6}})
        assert base.json()["generated_text"] != _generate(client, "old")["generated_text"]


def test_a_pickle_that_runs_code_is_refused_unexecuted(serve, llama_dir, causal_adapters, tmp_path) -> None:
    MARKER.unlink(missing_ok=True)
    root = tmp_path / "root"
    evil = _as_bin(causal_adapters["lora4"], root / "evil")
    state = load_file(causal_adapters["lora4"] / "adapter_model.safetensors")
    torch.save({**state, "payload": _RunsCode()}, evil / "adapter_model.bin")
    settings = dict(
        base_model=str(llama_dir), adapter_root=str(root), admin_key="admin-secret", allow_bin_weights=True
    )
    with serve(**settings) as client:
        refused = _load(client, "evil", "evil")
        assert refused.status_code == 422, refused.text
        assert "weights_only" in refused.json()["error"]
    assert not MARKER.exists()


def test_uploads_stay_safetensors_only(serve, llama_dir, causal_adapters, tmp_path) -> None:
    old = _as_bin(causal_adapters["lora4"], tmp_path / "old")
    settings = dict(
        base_model=str(llama_dir),
        admin_key="admin-secret",
        uploads_dir=str(tmp_path / "uploads"),
        allow_bin_weights=True,
    )
    with serve(**settings) as client:
        sent = client.post(
            "/v1/adapters",
            data={"name": "up"},
            files={
                "config": ("adapter_config.json", (old / "adapter_config.json").read_bytes()),
                "weights": ("adapter_model.bin", (old / "adapter_model.bin").read_bytes()),
            },
            headers=ADMIN,
        )
        assert sent.status_code == 422, sent.text
        assert "pickle" in json.dumps(sent.json())
