"""Every bad adapter is refused with its own error class (and HTTP status), before anything is visible, and
every other adapter keeps serving."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os

import pytest
import torch
from prometheus_client import CollectorRegistry
from safetensors.torch import save
from store_fixtures import Reference, forward, ia3_files, lora_files, make_store, run, write_adapter
from tiny_models import tiny_llama
from transformers import LlamaConfig, LlamaForCausalLM

from adapters_core.errors import (
    AdapterConfigError,
    AdapterShapeError,
    AdapterWeightsError,
    NoTargetModulesError,
    UnsafeFormatError,
)
from server.errors import status_of
from server.store import (
    PrometheusStoreMetrics,
    RankTooLargeError,
    UploadsDiskFullError,
    UploadTooLargeError,
    uploads,
)
from server.store.parsing import parse_config, parse_weights

BASE = tiny_llama(0)
GOOD = lora_files(BASE, 1)


def _other_base() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(cfg)


def _pickled() -> bytes:
    buf = io.BytesIO()
    torch.save({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(4, 64)}, buf)
    return buf.getvalue()


def _nan() -> bytes:
    from safetensors.torch import load

    state = load(GOOD[1])
    next(iter(state.values()))[0, 0] = float("nan")
    return save(state)


def _no_targets() -> bytes:
    key = "base_model.model.transformer.h.0.attn.c_attn"  # GPT-2 module names on a llama
    return save({f"{key}.lora_A.weight": torch.ones(4, 64), f"{key}.lora_B.weight": torch.ones(192, 4)})


def _config(**changes) -> bytes:
    return json.dumps({**json.loads(GOOD[0]), **changes}).encode()


def _alpha_literal(literal: str) -> bytes:
    """GOOD's config with a JSON literal Python's json accepts (NaN, Infinity) as lora_alpha."""
    return GOOD[0].replace(b'"lora_alpha": 8', b'"lora_alpha": ' + literal.encode())


def _weights(edit) -> bytes:
    from safetensors.torch import load

    state = load(GOOD[1])
    edit(state)
    return save(state)


def _times_1e30(state) -> None:  # finite in float32; the layer's outputs overflow once normalised
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    state[key] = state[key] * 1e30


def _drop_layer1_v(state) -> None:
    for key in [k for k in state if ".layers.1.self_attn.v_proj." in k]:
        del state[key]


BAD_UPLOADS = {
    "pickle": (GOOD[0], _pickled, UnsafeFormatError, 422, "pickle"),
    "corrupt": (GOOD[0], lambda: GOOD[1][:-7], AdapterWeightsError, 422, "weights"),
    "garbage": (GOOD[0], lambda: b"\x00" * 64, AdapterWeightsError, 422, "weights"),
    "nan": (GOOD[0], _nan, AdapterWeightsError, 422, "weights"),
    "wrong_base": (
        lora_files(_other_base(), 1)[0],
        lambda: lora_files(_other_base(), 1)[1],
        AdapterShapeError,
        422,
        "shape",
    ),
    "rank": (
        lora_files(BASE, 2, rank=32)[0],
        lambda: lora_files(BASE, 2, rank=32)[1],
        RankTooLargeError,
        422,
        "rank",
    ),
    "no_targets": (GOOD[0], _no_targets, NoTargetModulesError, 422, "no_target_modules"),
    "bad_json": (b"{not json", lambda: GOOD[1], AdapterConfigError, 422, "config"),
    "not_utf8": (b"\xff\xfe{}", lambda: GOOD[1], AdapterConfigError, 422, "config"),
    "no_peft_type": (json.dumps({"r": 4}).encode(), lambda: GOOD[1], AdapterConfigError, 422, "config"),
    "unknown_type": (
        json.dumps({"peft_type": "LOHA"}).encode(),
        lambda: GOOD[1],
        AdapterConfigError,
        422,
        "config",
    ),
    # numbers (issue 12, bug 2): JSON literals and out-of-range values, named by their field
    "alpha_nan": (_alpha_literal("NaN"), lambda: GOOD[1], AdapterConfigError, 422, "config"),
    "alpha_infinity": (_alpha_literal("Infinity"), lambda: GOOD[1], AdapterConfigError, 422, "config"),
    "alpha_1e308": (_config(lora_alpha=1e308), lambda: GOOD[1], AdapterConfigError, 422, "config"),
    "rank_huge": (_config(r=10**9), lambda: GOOD[1], AdapterConfigError, 422, "config"),
    "b_times_1e30": (GOOD[0], lambda: _weights(_times_1e30), AdapterWeightsError, 422, "weights"),
    # state and config disagree (bug 3)
    "targets_empty": (
        _config(target_modules=[]),
        lambda: GOOD[1],
        NoTargetModulesError,
        422,
        "no_target_modules",
    ),
    "targets_unknown": (
        _config(target_modules=["nothing"]),
        lambda: GOOD[1],
        NoTargetModulesError,
        422,
        "no_target_modules",
    ),
    "untargeted_weights": (
        _config(target_modules=["q_proj"]),
        lambda: GOOD[1],
        AdapterWeightsError,
        422,
        "weights",
    ),
    "partial_weights": (GOOD[0], lambda: _weights(_drop_layer1_v), AdapterWeightsError, 422, "weights"),
    # odd input (bug 5)
    "peft_type_list": (_config(peft_type=["LORA"]), lambda: GOOD[1], AdapterConfigError, 422, "config"),
    "nested_100k": (b"[" * 100_000 + b"]" * 100_000, lambda: GOOD[1], AdapterConfigError, 422, "config"),
}
# What each refusal names: the field or module at fault.
NAMED = {
    "alpha_nan": "lora_alpha must be a finite number",
    "alpha_infinity": "lora_alpha must be a finite number",
    "alpha_1e308": "lora_alpha must be a finite number",
    "rank_huge": "r must be a positive integer <= 65536, got 1000000000",
    "b_times_1e30": "model.layers.1.self_attn.v_proj: on the validation probe",
    "targets_empty": "target_modules=[] matches no module",
    "targets_unknown": "target_modules=['nothing'] matches no module",
    "untargeted_weights": "does not target: model.layers.0.self_attn.v_proj, model.layers.1.self_attn.v_proj",
    "partial_weights": "no tensors in the file: model.layers.1.self_attn.v_proj;",
    "peft_type_list": "peft_type must be a string",
    "nested_100k": "nests too deeply",
    "pickle": "the weights are a pickle / torch.save file",
    "corrupt": "adapter_model.safetensors is corrupt or truncated",
    "garbage": "adapter_model.safetensors is corrupt or truncated",
    "nan": "' contains NaN or Inf values",  # the tensor poisoned is the file's first, in any order
    "wrong_base": "lora_A.weight has shape (4, 32) but the base layer has in_features=64",
    "rank": "LoRA rank 32 is above this server's maximum of 16",
    "no_targets": "the base model has no module transformer.h.0.attn.c_attn",
    "bad_json": "adapter_config.json: not valid UTF-8 JSON",
    "not_utf8": "adapter_config.json is not valid UTF-8",
    "no_peft_type": "missing required key 'peft_type'",
    "unknown_type": "unknown or unsupported peft_type 'LOHA'",
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_upload_is_refused_and_the_current_version_keeps_serving(tmp_path, case: str) -> None:
    config, weights, error, status, reason = BAD_UPLOADS[case]
    registry = CollectorRegistry()
    store = make_store(str(tmp_path), metrics=PrometheusStoreMetrics(registry))
    ref = Reference()

    async def scenario() -> None:
        good = await store.upload("a", *GOOD)
        with pytest.raises(error) as info:
            await store.upload("a", config, weights())
        assert status_of(info.value)[0] == status
        assert NAMED[case] in str(info.value)
        assert store.get("a").content_hash == good.content_hash
        async with store.acquire("a") as lease:
            out = forward(store.model, store.model_lock, [lease.model_name])[0]
            assert torch.equal(out, ref.logits(GOOD))
        with pytest.raises(error):
            await store.upload("fresh", config, weights())
        assert "fresh" not in store.catalog
        assert not os.path.lexists(tmp_path / "uploads" / "fresh")
        assert os.listdir(tmp_path / "uploads" / "versions") == [lease.model_name]
        await store.close()

    run(scenario())
    assert registry.get_sample_value("swapyard_adapter_load_failures_total", {"reason": reason}) == 2


def test_oversized_upload_is_413_before_parsing(tmp_path) -> None:
    store = make_store(str(tmp_path), max_adapter_bytes=1000)

    async def scenario() -> None:
        with pytest.raises(UploadTooLargeError, match="--max-adapter-bytes") as info:
            await store.upload("big", *GOOD)
        assert status_of(info.value)[0] == 413
        assert "big" not in store.catalog
        await store.close()

    run(scenario())


def test_bad_local_adapters_fail_their_requests_only(tmp_path) -> None:
    store = make_store(str(tmp_path))
    roots = tmp_path / "adapters"
    write_adapter(str(roots / "good"), ia3_files(BASE, 3))
    os.makedirs(roots / "pkl")
    (roots / "pkl" / "adapter_config.json").write_bytes(GOOD[0])
    (roots / "pkl" / "adapter_model.bin").write_bytes(_pickled())
    write_adapter(str(roots / "nan"), (GOOD[0], _nan()))
    write_adapter(str(roots / "big"), lora_files(BASE, 4, rank=32))
    for name in ("good", "pkl", "nan", "big"):
        store.register(name, store.policy.local_from_request(name))
    ref = Reference()

    async def scenario() -> None:
        good = await store.acquire("good")
        for name, error in (
            ("pkl", UnsafeFormatError),
            ("nan", AdapterWeightsError),
            ("big", RankTooLargeError),
        ):
            results = await asyncio.gather(*(store.acquire(name) for _ in range(3)), return_exceptions=True)
            assert all(isinstance(r, error) for r in results), results
            assert store.get(name).tier == "disk"
        out = forward(store.model, store.model_lock, [good.model_name])[0]
        assert torch.equal(out, ref.logits(ia3_files(BASE, 3)))
        good.release()
        assert list(store.model.adapters) == [good.model_name]
        await store.close()

    run(scenario())


def test_oversized_local_file_is_413(tmp_path) -> None:
    store = make_store(str(tmp_path), max_adapter_bytes=1000)
    write_adapter(str(tmp_path / "adapters" / "big"), GOOD)
    store.register("big", store.policy.local_from_request("big"))

    async def scenario() -> None:
        with pytest.raises(
            UploadTooLargeError,
            match=r"above this server's limit of 1000 bytes \(raise it with --max-adapter-bytes\)",
        ):
            await store.acquire("big")
        await store.close()

    run(scenario())


def test_a_full_uploads_disk_is_507_and_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    registry = CollectorRegistry()
    store = make_store(str(tmp_path), metrics=PrometheusStoreMetrics(registry))
    ref = Reference()
    other = lora_files(BASE, 7)
    real_write = uploads._write_file
    written: list[str] = []

    def write_until_full(path: str, data: bytes) -> None:
        written.append(path)
        if path.endswith(".safetensors"):  # the config is written, then the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    async def scenario() -> None:
        good = await store.upload("a", *GOOD)
        monkeypatch.setattr(uploads, "_write_file", write_until_full)
        for name in ("a", "fresh"):
            with pytest.raises(UploadsDiskFullError, match="uploads disk is full") as info:
                await store.upload(name, *other)
            assert status_of(info.value) == (507, "insufficient_storage")
        assert len(written) == 4  # the write really ran (config, then weights) for both uploads
        assert store.get("a").content_hash == good.content_hash and "fresh" not in store.catalog
        async with store.acquire("a") as lease:
            assert torch.equal(
                forward(store.model, store.model_lock, [lease.model_name])[0], ref.logits(GOOD)
            )
        root = tmp_path / "uploads"
        assert os.listdir(root / "versions") == [lease.model_name] and os.listdir(root / ".tmp") == []
        assert not os.path.lexists(root / "fresh")
        await store.close()

    run(scenario())
    assert registry.get_sample_value("swapyard_adapter_load_failures_total", {"reason": "disk_full"}) == 2


def test_other_write_errors_are_not_disguised_as_a_full_disk(tmp_path, monkeypatch) -> None:
    store = make_store(str(tmp_path))

    def denied(path: str, data: bytes) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(uploads, "_write_file", denied)

    async def scenario() -> None:
        with pytest.raises(PermissionError):
            await store.upload("a", *GOOD)
        await store.close()

    run(scenario())


def test_the_probe_effect_is_in_the_record(tmp_path) -> None:
    store = make_store(str(tmp_path))
    write_adapter(str(tmp_path / "adapters" / "local"), GOOD)
    store.register("local", store.policy.local_from_request("local"))
    expected = store.model.parse(parse_config(GOOD[0], "t"), parse_weights(GOOD[1], "t")).probe.max_delta

    async def scenario() -> None:
        assert store.get("local").probe_max_delta is None  # not read yet
        uploaded = await store.upload("up", *GOOD)
        assert uploaded.probe_max_delta == pytest.approx(expected) and expected > 0.01
        async with store.acquire("local"):
            pass
        assert store.get("local").probe_max_delta == pytest.approx(expected)
        ia3 = await store.upload("ia3", *ia3_files(BASE, 3))
        assert ia3.probe_max_delta is not None and ia3.probe_max_delta != pytest.approx(expected)
        await store.close()

    run(scenario())
