"""Leases, eviction, shared loads, hot-swap by content hash, delete in use, prefetch, host LRU, restarts."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import torch
from store_fixtures import (
    Reference,
    base_logits,
    forward,
    lora_files,
    make_model,
    make_store,
    pool_pages_used,
    resident_names,
    run,
    write_adapter,
)
from tiny_models import tiny_llama

from server.errors import status_of
from server.store import (
    AdapterExistsError,
    AdapterInUseError,
    AdapterStore,
    AdapterTooLargeError,
    StoreBusyError,
    StoreConfig,
    UnknownAdapterError,
    model_validator,
)

BASE = tiny_llama(0)


def _files(seed: int, rank: int = 4) -> tuple[bytes, bytes]:
    return lora_files(BASE, seed, rank=rank)


def _register(
    store: AdapterStore, tmp: str, names: list[str], seed0: int = 0
) -> dict[str, tuple[bytes, bytes]]:
    files = {}
    for i, name in enumerate(names):
        files[name] = _files(seed0 + i)
        write_adapter(os.path.join(tmp, "adapters", name), files[name])
        store.register(name, store.policy.local_from_request(name))
    return files


async def _loads_finished(store: AdapterStore) -> None:
    """Wait for every load the store has started (the test's own, never a wall-clock bound)."""
    while store._loads:
        tasks = [p.task for p in store._loads.values() if p.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the loads' done-callbacks run


def test_acquire_loads_once_for_concurrent_requests(tmp_path) -> None:
    calls = []
    model = make_model()
    validate = model_validator(model)
    store = make_store(str(tmp_path), model=model, validator=lambda c, s: calls.append(1) or validate(c, s))
    files = _register(store, str(tmp_path), ["a"])
    ref = Reference()

    async def scenario() -> None:
        leases = await asyncio.gather(*(store.acquire("a") for _ in range(10)))
        assert len({lease.model_name for lease in leases}) == 1
        assert store.get("a").leases == 10 and store.get("a").tier == "device"
        out = forward(store.model, store.model_lock, [leases[0].model_name])[0]
        assert torch.equal(out, ref.logits(files["a"]))
        for lease in leases:
            lease.release()
            lease.release()  # idempotent
        assert store.get("a").leases == 0
        await store.close()

    run(scenario())
    assert len(calls) == 1
    assert store.get("a").hits == 10


def test_unknown_adapter_is_404_never_the_base(tmp_path) -> None:
    store = make_store(str(tmp_path))

    async def scenario() -> None:
        with pytest.raises(UnknownAdapterError) as info:
            await store.acquire("nope")
        assert status_of(info.value)[0] == 404
        await store.close()

    run(scenario())


def test_leased_adapters_are_never_evicted_and_lru_goes_first(tmp_path) -> None:
    store = make_store(str(tmp_path), model=make_model(slots=2), capacity_timeout_s=0.2)
    _register(store, str(tmp_path), ["a", "b", "c"])

    async def scenario() -> None:
        a = await store.acquire("a")
        b = await store.acquire("b")
        with pytest.raises(StoreBusyError) as info:  # both slots leased: c cannot get in
            await store.acquire("c")
        assert status_of(info.value)[0] == 503
        assert store.get("a").tier == store.get("b").tier == "device"
        a.release()
        async with store.acquire("c"):
            assert set(resident_names(store)) == {"b", "c"}  # a (unleased LRU) went
        b.release()
        async with store.acquire("a"):  # b is older than c now: b goes
            assert set(resident_names(store)) == {"a", "c"}
        await store.close()

    run(scenario())


def test_waiting_load_proceeds_when_a_lease_ends(tmp_path) -> None:
    store = make_store(str(tmp_path), model=make_model(slots=1), capacity_timeout_s=5.0)
    files = _register(store, str(tmp_path), ["a", "b"])
    ref = Reference()

    async def scenario() -> None:
        a = await store.acquire("a")
        waiter = asyncio.ensure_future(store.acquire("b"))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # b waits for room without failing
        out = forward(store.model, store.model_lock, [a.model_name])[0]
        assert torch.equal(out, ref.logits(files["a"]))  # a keeps serving meanwhile
        a.release()
        b = await asyncio.wait_for(waiter, 5)
        assert torch.equal(forward(store.model, store.model_lock, [b.model_name])[0], ref.logits(files["b"]))
        b.release()
        await store.close()

    run(scenario())


def _rank_units(n: int) -> int:
    """`adapter_memory_bytes` that give every adapted layer's pool room for `n` float32 rank units (the
    model splits the budget by layer width, and a rank unit of a layer costs 4 bytes per unit of width)."""
    width = sum(m.in_features + m.out_features for m in BASE.modules() if isinstance(m, torch.nn.Linear))
    return n * 4 * width


def test_the_models_pools_are_the_device_budget(tmp_path) -> None:
    # 24 rank units per pool: a rank-16 and a rank-2 fit, two rank-16s do not; slots (16) never bind
    store = make_store(str(tmp_path), model=make_model(memory_bytes=_rank_units(24)))

    async def scenario() -> None:
        await store.upload("big", *_files(1, rank=16))
        await store.upload("big2", *_files(3, rank=16))
        await store.upload("small", *_files(2, rank=2))
        async with store.acquire("big"), store.acquire("small"):
            assert set(resident_names(store)) == {"big", "small"}
        async with store.acquire("big2"):  # the pools refuse it: big (LRU, unleased) makes room
            assert set(resident_names(store)) == {"big2", "small"}
        await store.close()

    run(scenario())


def test_an_adapter_larger_than_the_empty_pools_is_422(tmp_path) -> None:
    store = make_store(str(tmp_path), model=make_model(memory_bytes=_rank_units(12)))

    async def scenario() -> None:
        await store.upload("big", *_files(1, rank=16))
        with pytest.raises(AdapterTooLargeError, match="even with no other adapter resident") as info:
            await store.acquire("big")
        assert status_of(info.value)[0] == 422
        assert store.model.adapters == {} and pool_pages_used(store.model) == 0
        await store.close()

    run(scenario())


def test_an_adapter_is_parsed_once_per_load(tmp_path) -> None:
    # validation's parse (with its probe forward) is the one MultiAdapterModel.add takes
    model = make_model()
    parse, calls = model.parse, []
    model.parse = lambda config, state: calls.append(1) or parse(config, state)  # type: ignore[method-assign]
    store = make_store(str(tmp_path), model=model)
    files = _register(store, str(tmp_path), ["a"])

    async def scenario() -> None:
        async with store.acquire("a") as lease:
            out = forward(store.model, store.model_lock, [lease.model_name])[0]
            assert torch.equal(out, Reference().logits(files["a"]))
        assert len(calls) == 1
        await store.unload()  # off the device and out of the host tier: the next load parses again
        async with store.acquire("a"):
            pass
        assert len(calls) == 2
        await store.close()

    run(scenario())


def test_reupload_serves_new_weights_while_old_lease_keeps_old(tmp_path) -> None:
    store = make_store(str(tmp_path))
    ref = Reference()
    v1, v2 = _files(1), _files(2)

    async def scenario() -> None:
        first = await store.upload("x", *v1)
        old = await store.acquire("x")
        second = await store.upload("x", *v2)
        assert first.content_hash != second.content_hash
        new = await store.acquire("x")
        assert new.model_name != old.model_name
        both = forward(store.model, store.model_lock, [old.model_name, new.model_name])
        assert torch.equal(both[0], ref.logits(v1)) and torch.equal(both[1], ref.logits(v2))
        assert len(store.model.adapters) == 2
        old.release()  # the last lease on v1: it unloads
        await store.device.settle()
        assert list(store.model.adapters) == [new.model_name]
        assert torch.equal(forward(store.model, store.model_lock, [new.model_name])[0], ref.logits(v2))
        new.release()
        # the upload on disk is the new version only, and a restarted store serves it
        versions = os.listdir(tmp_path / "uploads" / "versions")
        assert versions == [new.model_name]
        await store.close()
        restarted = make_store(str(tmp_path))
        assert restarted.restore_uploads() == ["x"]
        async with restarted.acquire("x") as lease:
            assert lease.key.content_hash == second.content_hash
        await restarted.close()

    run(scenario())


def test_a_shared_lease_pins_its_version_until_its_own_release(tmp_path) -> None:
    """`Lease.share()` (the rows of one request): the same version, even once a newer one is current, held
    until the share itself is released; a released lease cannot be shared."""
    store = make_store(str(tmp_path))
    ref = Reference()
    v1, v2 = _files(1), _files(2)

    async def scenario() -> None:
        await store.upload("x", *v1)
        lease = await store.acquire("x")
        await store.upload("x", *v2)  # v2 is current from here
        shared = lease.share()
        lease.release()
        assert shared.key == lease.key and store.get("x").leases == 1
        assert torch.equal(forward(store.model, store.model_lock, [shared.model_name])[0], ref.logits(v1))
        with pytest.raises(RuntimeError, match="released"):
            lease.share()
        shared.release()
        await store.device.settle()
        assert shared.model_name not in store.model.adapters  # the last pin on v1 went: it unloads
        await store.close()

    run(scenario())


def test_reload_of_a_changed_local_source_is_a_new_version(tmp_path) -> None:
    store = make_store(str(tmp_path))
    ref = Reference()
    files = _register(store, str(tmp_path), ["loc"])

    async def scenario() -> None:
        async with store.acquire("loc") as lease:
            assert torch.equal(
                forward(store.model, store.model_lock, [lease.model_name])[0], ref.logits(files["loc"])
            )
        new_files = _files(99)
        write_adapter(str(tmp_path / "adapters" / "loc"), new_files)
        info = await store.load("loc", store.policy.local_from_request("loc"))
        assert info.tier == "host"
        async with store.acquire("loc") as lease:
            assert torch.equal(
                forward(store.model, store.model_lock, [lease.model_name])[0], ref.logits(new_files)
            )
        await store.device.settle()
        assert len(store.model.adapters) == 1
        with pytest.raises(AdapterExistsError):
            await store.load("loc", store.policy.local_from_request("loc"), replace=False)
        await store.close()

    run(scenario())


def test_delete_in_use_is_409_and_the_running_lease_completes(tmp_path) -> None:
    store = make_store(str(tmp_path))
    ref = Reference()
    files = _files(5)

    async def scenario() -> None:
        await store.upload("d", *files)
        lease = await store.acquire("d")
        with pytest.raises(AdapterInUseError) as info:
            await store.delete("d")
        assert status_of(info.value)[0] == 409 and info.value.leases == 1
        assert store.get("d").tier == "device"  # nothing changed
        deleting = asyncio.ensure_future(store.delete("d", wait=True))
        await asyncio.sleep(0.05)
        assert not deleting.done()
        with pytest.raises(UnknownAdapterError):  # new requests: 404 at once
            await store.acquire("d")
        # the running request finishes on its version
        assert torch.equal(forward(store.model, store.model_lock, [lease.model_name])[0], ref.logits(files))
        lease.release()
        await asyncio.wait_for(deleting, 5)
        assert store.model.adapters == {} and store.host.used_bytes == 0
        assert not os.path.lexists(tmp_path / "uploads" / "d")
        assert os.listdir(tmp_path / "uploads" / "versions") == []
        await store.close()

    run(scenario())


def test_delete_wait_times_out_busy_but_still_unloads_later(tmp_path) -> None:
    store = make_store(str(tmp_path))

    async def scenario() -> None:
        await store.upload("d", *_files(6))
        lease = await store.acquire("d")
        with pytest.raises(StoreBusyError):
            await store.delete("d", wait=True, timeout=0.05)
        assert "d" not in store.catalog
        lease.release()
        await store.device.settle()
        assert store.model.adapters == {}
        await store.close()

    run(scenario())


def test_cancelled_acquire_leaves_nothing_pinned(tmp_path) -> None:
    store = make_store(str(tmp_path), model=make_model(slots=1))
    _register(store, str(tmp_path), ["a", "b"])

    async def scenario() -> None:
        task = asyncio.ensure_future(store.acquire("a"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _loads_finished(store)  # the shared load still completes
        assert store.get("a").leases == 0
        async with store.acquire("b"):  # a holds nothing: it can be evicted for b
            assert resident_names(store) == ["b"]
        await store.close()

    run(scenario())


def test_prefetch_loads_ahead_without_stalling(tmp_path) -> None:
    store = make_store(str(tmp_path), model=make_model(slots=2))
    _register(store, str(tmp_path), ["a", "b", "c"])

    async def scenario() -> None:
        held = await store.acquire("a")
        other = await store.acquire("b")
        assert store.prefetch(["c", "unknown", None, "a"]) == 1  # a is resident, unknown is skipped
        await _loads_finished(store)
        assert store.get("c").tier == "host"  # no free slot: host only, nobody was evicted or stalled
        other.release()
        assert store.prefetch(["c"]) == 1
        await _loads_finished(store)
        assert store.get("c").tier == "device"
        async with store.acquire("c"):
            pass
        held.release()
        await store.close()

    run(scenario())


def test_host_lru_keeps_budget_and_tiers_are_reported(tmp_path) -> None:
    sizes = len(_files(0)[1])
    store = make_store(str(tmp_path), model=make_model(slots=1), host_budget_bytes=2 * sizes)
    _register(store, str(tmp_path), ["a", "b", "c"])

    async def scenario() -> None:
        assert {i.tier for i in store.list()} == {"disk"}
        for name in ("a", "b", "c"):
            async with store.acquire(name):
                pass
        assert store.host.used_bytes <= 2 * sizes
        tiers = {i.name: i.tier for i in store.list()}
        assert tiers == {"a": "disk", "b": "host", "c": "device"}
        info = store.get("c")
        assert (info.method, info.rank, info.source) == ("LORA", 4, "local:c")
        assert info.size_bytes and info.content_hash and info.loaded_at
        await store.unload("c")
        assert store.get("c").tier == "disk"
        await store.close()

    run(scenario())


def test_register_conflicts_and_base_rows_are_untouched(tmp_path) -> None:
    store = make_store(str(tmp_path))
    _register(store, str(tmp_path), ["a"])
    with pytest.raises(AdapterExistsError) as info:
        store.register("a", store.policy.local_from_request("a"))
    assert status_of(info.value)[0] == 409

    async def scenario() -> None:
        async with store.acquire("a") as lease:
            out = forward(store.model, store.model_lock, [None, lease.model_name])
            assert torch.equal(out[0], base_logits())
        await store.close()

    run(scenario())


def test_store_config_validates_itself() -> None:
    with pytest.raises(ValueError, match="host_budget_bytes"):
        StoreConfig(host_budget_bytes=0)
    with pytest.raises(ValueError, match="max_rank"):
        StoreConfig(max_rank=0)


def test_release_from_another_thread_is_handed_to_the_loop(tmp_path) -> None:
    store = make_store(str(tmp_path), model=make_model(slots=1))
    _register(store, str(tmp_path), ["a", "b"])

    async def scenario() -> None:
        lease = await store.acquire("a")
        thread = threading.Thread(target=lambda: (lease.release(), lease.release()))
        thread.start()
        thread.join(5)
        async with store.acquire("b"):  # a's lease ended: it can be evicted
            assert resident_names(store) == ["b"]
        assert store.get("a").leases == 0
        await store.close()

    run(scenario())
