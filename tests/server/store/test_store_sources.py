"""Sources and their policy: names, request paths (traversal, absolute, symlink escape), the Hub (allow-list,
revision pinning, its cache as the disk tier, offline), atomic uploads on disk, and bounded metric labels."""

from __future__ import annotations

import os

import pytest
import torch
from prometheus_client import CollectorRegistry
from store_fixtures import Reference, forward, lora_files, make_store, run, write_adapter
from tiny_models import tiny_llama

from adapters_core.errors import AdapterNotFoundError, AdapterWeightsError, UnsafeFormatError
from server.errors import status_of
from server.store import (
    InvalidAdapterNameError,
    PrometheusStoreMetrics,
    ResidentKey,
    SourceNotAllowedError,
    SourcePolicy,
    StoreBusyError,
    check_name,
)
from server.store.metrics import REASONS, failure_reason
from server.store.sources import fetch
from server.store.uploads import scan_uploads, write_upload

BASE = tiny_llama(0)
GOOD = lora_files(BASE, 1)
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "name", ["", "..", "../x", "a/b", ".hidden", "x@y", "a b", "a\x00", "é", "a" * 129, "a..b"]
)
def test_invalid_names_are_400(name: str) -> None:
    with pytest.raises(InvalidAdapterNameError) as info:
        check_name(name)
    assert status_of(info.value)[0] == 400


@pytest.mark.parametrize("name", ["fr", "sql-v2", "A.b_c", "x" * 128])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("path", ["../x", "/etc", "a/../../b", "~root", "", "a\\b", "x/../..", "\x00"])
def test_request_paths_cannot_traverse(tmp_path, path: str) -> None:
    policy = SourcePolicy([str(tmp_path)])
    with pytest.raises(InvalidAdapterNameError):
        policy.local_from_request(path)


def test_request_paths_stay_inside_roots_through_symlinks(tmp_path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_adapter(str(outside / "secret"), GOOD)
    write_adapter(str(root / "ok"), GOOD)
    os.symlink(outside / "secret", root / "escape")
    os.makedirs(root / "sneaky")
    (root / "sneaky" / "adapter_config.json").write_bytes(GOOD[0])
    os.symlink(
        outside / "secret" / "adapter_model.safetensors", root / "sneaky" / "adapter_model.safetensors"
    )
    policy = SourcePolicy([str(root)])

    assert policy.local_from_request("ok").describe() == "local:ok"
    with pytest.raises(SourceNotAllowedError) as info:
        policy.local_from_request("escape")
    assert status_of(info.value)[0] == 403
    sneaky = policy.local_from_request("sneaky")  # the directory is inside; one file links out
    with pytest.raises(SourceNotAllowedError):
        fetch(sneaky, max_bytes=1 << 20)
    with pytest.raises(AdapterNotFoundError) as missing:
        policy.local_from_request("nope")
    assert status_of(missing.value)[0] == 404
    with pytest.raises(SourceNotAllowedError):
        SourcePolicy([]).local_from_request("ok")
    assert policy.local_trusted(outside / "secret").location == os.path.realpath(outside / "secret")


def test_upload_names_cannot_traverse(tmp_path) -> None:
    store = make_store(str(tmp_path))

    async def scenario() -> None:
        for name in ("../evil", "a/b", "..", "/abs"):
            with pytest.raises(InvalidAdapterNameError):
                await store.upload(name, *GOOD)
        await store.close()

    run(scenario())
    assert not os.path.exists(tmp_path / "evil")
    assert sorted(os.listdir(tmp_path)) == ["adapters"]  # not even the uploads root was created


def test_uploads_off_without_a_root(tmp_path) -> None:
    store = make_store(str(tmp_path), uploads_root=None)

    async def scenario() -> None:
        with pytest.raises(SourceNotAllowedError):
            await store.upload("a", *GOOD)
        await store.close()

    run(scenario())


def test_hub_policy() -> None:
    policy = SourcePolicy(hub_owners=["acme"])
    assert policy.hub("acme/fr", revision="v1").describe() == "hub:acme/fr@v1"
    with pytest.raises(SourceNotAllowedError):
        policy.hub("evil/fr")
    for bad in ("acme", "acme/fr/x", "../x", "acme/..", "/acme/fr"):
        with pytest.raises(InvalidAdapterNameError):
            policy.hub(bad)
    with pytest.raises(InvalidAdapterNameError):
        policy.hub("acme/fr", subfolder="../x")
    with pytest.raises(SourceNotAllowedError):
        SourcePolicy(allow_hub=False).hub("acme/fr")


def _fake_hub_cache(cache: str, repo: str, files: tuple[bytes, bytes], *, pickle_only: bool = False) -> None:
    """An offline huggingface_hub cache holding `repo` at commit SHA (what a download leaves behind)."""
    repo_dir = os.path.join(cache, "models--" + repo.replace("/", "--"))
    snapshot = os.path.join(repo_dir, "snapshots", SHA)
    os.makedirs(snapshot)
    os.makedirs(os.path.join(repo_dir, "refs"))
    with open(os.path.join(repo_dir, "refs", "main"), "w") as fh:
        fh.write(SHA)
    with open(os.path.join(snapshot, "adapter_config.json"), "wb") as fh:
        fh.write(files[0])
    weights = "adapter_model.bin" if pickle_only else "adapter_model.safetensors"
    with open(os.path.join(snapshot, weights), "wb") as fh:
        fh.write(files[1])


def test_hub_adapters_from_the_cache_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = str(tmp_path / "hf")
    _fake_hub_cache(cache, "acme/fr", GOOD)
    _fake_hub_cache(cache, "acme/pkl", GOOD, pickle_only=True)
    store = make_store(str(tmp_path), hub_cache_dir=cache, hub_owners=("acme",))
    ref = Reference()

    async def scenario() -> None:
        assert store.register("fr", store.policy.hub("acme/fr")).tier == "disk"
        assert store.register("pinned", store.policy.hub("acme/fr", revision=SHA)).tier == "disk"
        assert store.register("absent", store.policy.hub("acme/absent")).tier == "source"
        store.register("pkl", store.policy.hub("acme/pkl"))
        for name in ("fr", "pinned"):
            async with store.acquire(name) as lease:
                out = forward(store.model, store.model_lock, [lease.model_name])[0]
                assert torch.equal(out, ref.logits(GOOD))
            assert store.get(name).revision == SHA  # the commit the revision resolved to
        with pytest.raises(AdapterNotFoundError) as info:
            await store.acquire("absent")
        assert status_of(info.value)[0] == 404
        with pytest.raises(UnsafeFormatError):
            await store.acquire("pkl")
        info2 = await store.load("fr2", store.policy.hub("acme/fr", revision=SHA))
        assert info2.source == f"hub:acme/fr@{SHA}" and info2.tier == "host"
        await store.close()

    run(scenario())


def test_uploads_are_atomic_versioned_and_survive_restart(tmp_path) -> None:
    root = str(tmp_path / "up")
    first = write_upload(root, ResidentKey("a", "1" * 64), *GOOD)
    second = write_upload(root, ResidentKey("a", "2" * 64), GOOD[0], GOOD[1])
    assert os.path.realpath(os.path.join(root, "a")) == os.path.realpath(second)
    assert os.listdir(os.path.join(root, ".tmp")) == []  # nothing staged is left behind
    with open(os.path.join(second, "adapter_model.safetensors"), "rb") as fh:
        assert fh.read() == GOOD[1]
    os.makedirs(os.path.join(root, ".tmp", "crashed-upload"))  # what a crash mid-write leaves
    assert scan_uploads(root) == {"a": os.path.realpath(second)}
    assert not os.path.exists(first)  # a version no name points at is garbage after a restart
    assert not os.path.exists(os.path.join(root, ".tmp"))


def test_failure_reasons_are_a_bounded_label_set() -> None:
    assert failure_reason(UnsafeFormatError("x")) == "pickle"
    assert failure_reason(AdapterWeightsError("x")) == "weights"
    assert failure_reason(StoreBusyError("x")) == "busy"
    assert failure_reason(KeyError("x")) == "other"
    registry = CollectorRegistry()
    metrics = PrometheusStoreMetrics(registry)
    metrics.failure("made-up-reason")
    assert registry.get_sample_value("swapyard_adapter_load_failures_total", {"reason": "other"}) == 1
    reasons = {
        s.labels["reason"] for m in registry.collect() for s in m.samples if s.name.endswith("failures_total")
    }
    assert reasons == set(REASONS)


def test_sources_are_shown_without_server_paths(tmp_path) -> None:
    store = make_store(str(tmp_path))
    operator_dir = tmp_path / "srv" / "secret-place" / "fr"
    write_adapter(str(operator_dir), GOOD)
    write_adapter(str(tmp_path / "adapters" / "nested" / "de"), GOOD)
    os.makedirs(tmp_path / "dir")
    write_adapter(str(tmp_path / "dir" / "es"), GOOD)
    os.symlink(operator_dir, tmp_path / "dir" / "alias")  # shown by its name in the dir, not its target's
    os.makedirs(tmp_path / "srv" / "empty")
    store.register("fr", store.policy.local_trusted(str(operator_dir)))
    store.register("de", store.policy.local_from_request("nested/de"))
    store.register_dir(str(tmp_path / "dir"))
    store.register("empty", store.policy.local_trusted(str(tmp_path / "srv" / "empty")))
    shown = {info.name: info.source for info in store.list()}
    assert shown == {
        "fr": "local:fr",
        "de": "local:nested/de",
        "es": "local:es",
        "alias": "local:alias",
        "empty": "local:empty",
    }

    async def scenario() -> None:
        with pytest.raises(AdapterNotFoundError) as info:  # error messages carry the public source too
            await store.acquire("empty")
        assert str(tmp_path) not in str(info.value) and "local:empty" in str(info.value)
        await store.close()

    run(scenario())
