"""`--on-demand-adapters`: unknown names that match a folder under --adapter-root or a Hub repo of an allowed
owner load on first use, once however many requests wait; everything else stays a 404.

The fetch stage is wrapped by a counting hook that can hold a load open: while it is held, other requests
are answered (the load runs in the store's worker threads, not the engine's), and every request for the
held name waits on that one load."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import huggingface_hub.constants
import pytest
from app_hooks import AcquireCounter
from pydantic import ValidationError

import server.store.pipeline as pipeline
from server.settings import Settings

SHA = "0123456789abcdef0123456789abcdef01234567"
WAITERS = 6


@pytest.fixture(scope="module")
def root(causal_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter root: fr (lora4's files), broken (a config that does not parse), escape (a symlink to a
    folder outside the root)."""
    base = tmp_path_factory.mktemp("on-demand")
    root = base / "root"
    root.mkdir()
    shutil.copytree(causal_adapters["lora4"], root / "fr")
    shutil.copytree(causal_adapters["lora4"], root / "broken")
    (root / "broken" / "adapter_config.json").write_text("{not json")
    shutil.copytree(causal_adapters["lora4"], base / "outside")
    (root / "escape").symlink_to(base / "outside")
    return root


class CountingFetch:
    """Wraps the store's fetch stage: counts fetches per source, records the thread, can hold one name."""

    def __init__(self, hold: str | None = None) -> None:
        self.real = pipeline.fetch
        self.hold = hold
        self.counts: dict[str, int] = {}
        self.threads: set[str] = set()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, source, **kwargs):
        name = os.path.basename(source.location)
        self.counts[name] = self.counts.get(name, 0) + 1
        self.threads.add(threading.current_thread().name)
        if name == self.hold:
            self.entered.set()
            assert self.release.wait(60), "the test never released the held load"
        return self.real(source, **kwargs)


def _complete(client, model: str) -> tuple[int, str]:
    out = client.post(
        "/v1/completions", json={"model": model, "prompt": "w5 w6 w7", "max_tokens": 4, "temperature": 0}
    )
    return out.status_code, out.json()["choices"][0]["text"] if out.status_code == 200 else out.text


def test_off_by_default(serve, llama_dir, root) -> None:
    with serve(base_model=str(llama_dir), adapter_root=str(root)) as client:
        assert _complete(client, "fr")[0] == 404


def test_needs_a_place_to_load_from() -> None:
    with pytest.raises(ValidationError, match="--on-demand-adapters needs somewhere to load from"):
        Settings(base_model="m", on_demand_adapters=True)


def test_one_load_however_many_wait_and_others_keep_running(
    serve, llama_dir, causal_adapters, root, monkeypatch
) -> None:
    fetch = CountingFetch(hold="fr")
    monkeypatch.setattr(pipeline, "fetch", fetch)
    settings = dict(
        base_model=str(llama_dir),
        adapters=[f"lora4={causal_adapters['lora4']}"],
        adapter_root=str(root),
        on_demand_adapters=True,
    )
    with serve(**settings) as client:
        registry = client.app.state.swapyard.engine.registry
        base_name = registry.base_name
        acquires = AcquireCounter(registry, monkeypatch)
        results: list[tuple[int, str]] = []
        threads = [
            threading.Thread(target=lambda: results.append(_complete(client, "fr"))) for _ in range(WAITERS)
        ]
        for thread in threads:
            thread.start()
        assert fetch.entered.wait(60)
        # Every request for fr has started its acquire: it joins the held load without yielding to the event
        # loop (registration and the store's acquire run up to their first await), so all of them wait on it.
        acquires.wait("fr", WAITERS)
        # The load is held open: other adapters' and the base's requests are served meanwhile.
        lora4 = _complete(client, "lora4")
        base = _complete(client, base_name)
        assert lora4[0] == 200 and base[0] == 200 and lora4[1] != base[1]
        assert registry.info("fr").hits == WAITERS and fetch.counts["fr"] == 1  # all wait on the one load
        fetch.release.set()
        for thread in threads:
            thread.join(60)
        assert results == [lora4] * WAITERS  # fr holds lora4's weights: the same greedy text
        assert fetch.counts["fr"] == 1
        assert all(name.startswith("swapyard-load") for name in fetch.threads)  # never the engine's thread
        assert "fr" in [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert _complete(client, "fr") == lora4 and fetch.counts["fr"] == 1  # resident now


def test_only_matching_names_load(serve, llama_dir, root) -> None:
    with serve(base_model=str(llama_dir), adapter_root=str(root), on_demand_adapters=True) as client:
        for name in ("nope", "../fr", "fr/..", "root/fr", ".fr", "fr/../fr", "%2e%2e/fr"):
            assert _complete(client, name)[0] == 404, name
        escaped = client.post("/v1/completions", json={"model": "escape", "prompt": "w5", "max_tokens": 2})
        assert escaped.status_code == 403 and "outside its adapter root" in escaped.json()["error"]
        broken = client.post("/v1/completions", json={"model": "broken", "prompt": "w5", "max_tokens": 2})
        assert broken.status_code == 422, broken.text
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert "broken" not in listed and "escape" not in listed  # failed first loads leave no entry


def _fake_hub_cache(cache: Path, repo: str, adapter: Path) -> None:
    """What a download of `repo` leaves in the huggingface_hub cache (offline tests)."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(SHA)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter / name, snapshot / name)


def test_hub_repos_of_allowed_owners(serve, llama_dir, causal_adapters, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    _fake_hub_cache(tmp_path, "acme/fr", causal_adapters["lora4"])
    _fake_hub_cache(tmp_path, "evil/fr", causal_adapters["lora4"])
    settings = dict(
        base_model=str(llama_dir),
        adapters=[f"lora4={causal_adapters['lora4']}"],
        hub_adapter_owners="acme",
        on_demand_adapters=True,
    )
    with serve(**settings) as client:
        lora4 = _complete(client, "lora4")
        assert _complete(client, "acme/fr") == lora4
        assert _complete(client, "evil/fr")[0] == 404  # not an allowed owner: unknown, as when off
        assert _complete(client, "acme/absent")[0] == 404
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert "acme/fr" in listed and "acme/absent" not in listed
