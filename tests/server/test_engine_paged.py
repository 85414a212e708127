"""The engine's paged path end to end (real app in process, tiny Llama, PEFT adapters of every method), over
the real paged core and over `ReferencePagedModel` (paged_double.py: a token-level KV cache read back through
the engine's block tables, with an exact full forward per row). Small `--max-batch-tokens` and KV pools force
chunked prefill and preemption; every answer must still be the adapter's own greedy answer alone."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from app_hooks import paged_client
from serve_helpers import all_at_once, prompt, reference_tokens
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters_core.multi import MultiAdapterModel
from adapters_core.paged import StepPlan
from server.engine import GenerationRequest
from server.sampling import SamplingParams

NEW = 12
BLOCK = 4
ADMIN = {"Authorization": "Bearer admin-secret"}


MODELS = ["double", "core"]


@pytest.fixture(scope="module")
def oracle(llama_dir: Path, causal_adapters: dict[str, Path]) -> tuple[MultiAdapterModel, Any]:
    multi = MultiAdapterModel(AutoModelForCausalLM.from_pretrained(llama_dir))
    for name, path in causal_adapters.items():
        multi.add(name, str(path))
    return multi, AutoTokenizer.from_pretrained(llama_dir)


def body(text: str, adapter: str | None, new: int = NEW) -> dict:
    return {"inputs": text, "parameters": {"adapter_id": adapter, "max_new_tokens": new, "details": True}}


def tokens(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()["details"]["tokens"]]


def counter(engine: Any, name: str) -> float:
    return float(getattr(engine.metrics, name)._value.get())


@pytest.mark.timeout(600)
@pytest.mark.parametrize("model", MODELS)
def test_concurrent_rows_equal_each_adapter_alone_under_chunking_and_preemption(
    model: str, llama_dir: Path, causal_adapters: dict[str, Path], oracle: tuple[MultiAdapterModel, Any]
) -> None:
    multi, tok = oracle
    names: list[str | None] = [None, *causal_adapters]
    adapters = [f"{name}={path}" for name, path in causal_adapters.items()]
    with paged_client(
        model,
        kv_blocks=17,  # 16 usable blocks = 64 positions; a row needs up to 6 blocks
        base_model=str(llama_dir),
        adapters=adapters,
        max_batch_size=8,
        max_batch_tokens=8,
        kv_block_size=BLOCK,
    ) as (client, engine, plans):
        texts = [prompt(50 + i, length=5 + 2 * (i % 4)) for i in range(len(names))]
        out = all_at_once(client, engine, [body(t, n) for t, n in zip(texts, names)])
        for name, text, response in zip(names, texts, out):
            assert tokens(response) == reference_tokens(multi, tok, text, name, NEW), name
        sizes = [sum(len(c.tokens) for c in plan.chunks) for plan in plans]
        assert max(sizes) == 8, "the token budget was never reached (or was passed)"
        assert any(not c.want_logits for plan in plans for c in plan.chunks), "no prompt was chunked"
        mixed = [p for p in plans if any(len(c.tokens) > 1 for c in p.chunks) and len(p.chunks) > 1]
        assert any(any(len(c.tokens) == 1 for c in p.chunks) for p in mixed), (
            "prefill never ran beside decodes"
        )
        assert counter(engine, "preemptions") > 0, "the KV budget was meant to force preemption"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("model", MODELS)
def test_prefix_blocks_are_shared_within_an_adapter_version_only(
    model: str,
    llama_dir: Path,
    causal_adapters: dict[str, Path],
    oracle: tuple[MultiAdapterModel, Any],
    tmp_path: Path,
) -> None:
    """The same prompt again reuses its cached blocks; a re-uploaded adapter of the same name does not (its
    answer is the new weights' answer), and neither does another adapter."""
    multi, tok = oracle
    text = prompt(7, length=14)  # 3 full blocks of 4 (+ the BOS)
    with paged_client(
        model,
        base_model=str(llama_dir),
        adapters=[f"ia3={causal_adapters['ia3']}"],
        admin_key="admin-secret",
        uploads_dir=str(tmp_path / "uploads"),
        kv_block_size=BLOCK,
        max_batch_tokens=64,
    ) as (client, engine, _):

        def upload(source: str) -> None:
            files = {
                "config": (
                    "adapter_config.json",
                    (causal_adapters[source] / "adapter_config.json").read_bytes(),
                ),
                "weights": (
                    "adapter_model.safetensors",
                    (causal_adapters[source] / "adapter_model.safetensors").read_bytes(),
                ),
            }
            response = client.post("/v1/adapters", data={"name": "hot"}, files=files, headers=ADMIN)
            assert response.status_code == 201, response.text

        upload("lora4")
        assert tokens(client.post("/generate", json=body(text, "hot"))) == reference_tokens(
            multi, tok, text, "lora4", NEW
        )
        hits = counter(engine, "prefix_cache_hits")
        assert tokens(client.post("/generate", json=body(text, "hot"))) == reference_tokens(
            multi, tok, text, "lora4", NEW
        )
        assert counter(engine, "prefix_cache_hits") - hits == 3 * BLOCK, (
            "the same prompt missed its own prefix"
        )
        hits = counter(engine, "prefix_cache_hits")
        upload("lora8")  # same name, new content hash
        assert tokens(client.post("/generate", json=body(text, "hot"))) == reference_tokens(
            multi, tok, text, "lora8", NEW
        )
        assert tokens(client.post("/generate", json=body(text, "ia3"))) == reference_tokens(
            multi, tok, text, "ia3", NEW
        )
        assert counter(engine, "prefix_cache_hits") == hits, "another adapter version reused cached blocks"
        metrics = client.get("/metrics").text
        assert "swapyard_kv_blocks_free" in metrics and "swapyard_prefix_cache_hit_tokens_total" in metrics


@pytest.mark.timeout(300)
@pytest.mark.parametrize("model", MODELS)
def test_a_flooding_adapter_does_not_delay_the_others_admission(
    model: str, llama_dir: Path, causal_adapters: dict[str, Path]
) -> None:
    """10 requests of lora4 then one of ia3 and one of dora, one row at a time: ia3 and dora are admitted
    second and third (first in, first out would put them last)."""
    adapters = [f"{n}={causal_adapters[n]}" for n in ("lora4", "ia3", "dora")]
    with paged_client(model, base_model=str(llama_dir), adapters=adapters, max_batch_size=1) as (
        client,
        engine,
        plans,
    ):
        order = [("lora4", 100 + i) for i in range(10)] + [("ia3", 200), ("dora", 300)]
        out = all_at_once(client, engine, [body(prompt(seed), name, new=2) for name, seed in order])
        assert all(r.status_code == 200 for r in out)
        first_seen: list[int] = []
        for plan in plans:
            for c in plan.chunks:
                if c.seq_id not in first_seen:
                    first_seen.append(c.seq_id)
        adapter_of = {c.seq_id: c.adapter.partition("@")[0] for p in plans for c in p.chunks}
        admitted = [adapter_of[s] for s in first_seen]
        assert admitted == ["lora4", "ia3", "dora"] + ["lora4"] * 9, admitted


def test_a_request_larger_than_the_whole_kv_cache_is_refused_with_the_flag_to_raise(llama_dir: Path) -> None:
    with paged_client("core", kv_blocks=5, base_model=str(llama_dir), kv_block_size=BLOCK) as (client, _, _):
        response = client.post("/generate", json=body(prompt(1, length=10), None, new=20))
        assert response.status_code == 422 and "--kv-cache-bytes" in response.json()["error"], response.text
        assert client.post("/generate", json=body(prompt(1, length=3), None, new=4)).status_code == 200


@pytest.mark.timeout(300)
@pytest.mark.parametrize("model", MODELS)
def test_failed_and_cancelled_rows_fail_alone_and_give_their_blocks_back(
    model: str, llama_dir: Path, causal_adapters: dict[str, Path], oracle: tuple[MultiAdapterModel, Any]
) -> None:
    multi, tok = oracle
    adapters = [f"{n}={causal_adapters[n]}" for n in ("lora4", "ia3")]
    settings = {
        "base_model": str(llama_dir),
        "adapters": adapters,
        "kv_block_size": BLOCK,
        "max_batch_tokens": 16,
    }
    with paged_client(model, **settings) as (client, engine, _):
        step = engine.model.paged_step

        def failing_for_ia3(plan: Any) -> Any:
            if any(c.adapter is not None and c.adapter.startswith("ia3@") for c in plan.chunks):
                raise RuntimeError("injected: this adapter's rows break the step")
            return step(plan)

        engine.model.paged_step = failing_for_ia3
        loop = asyncio.new_event_loop()  # never run: the cancelled row's events are not read
        long_text = prompt(9)
        # It cannot end before it is cancelled: no EOS among its tokens (checked, not assumed).
        assert tok.eos_token_id not in reference_tokens(multi, tok, long_text, None, 100)
        request = GenerationRequest(tok(long_text)["input_ids"], None, SamplingParams(), max_new_tokens=100)
        with engine.hold():
            abandoned = engine.submit_generate(request, loop)
        texts = [prompt(60 + i) for i in range(3)]
        names = ["lora4", "ia3", None]
        out = all_at_once(client, engine, [body(t, n) for t, n in zip(texts, names)])
        assert out[1].status_code == 500 and "RuntimeError" in out[1].json()["error"], out[1].text
        for i in (0, 2):
            assert tokens(out[i]) == reference_tokens(multi, tok, texts[i], names[i], NEW)
        with engine.hold():
            running = [row for row in engine._batch.rows if row.handle is abandoned]
            assert running and engine._batch.blocks.table(abandoned.id), (
                "the long row was meant to be running"
            )
            abandoned.cancel()
        engine.wait_idle()  # the engine thread signals when every row has left
        assert engine._batch.blocks.pool.num_used == 0, "a row that left kept KV blocks"
        loop.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("model", MODELS)
def test_a_flood_holding_every_row_gives_one_up_the_step_another_adapter_arrives(
    model: str, llama_dir: Path, causal_adapters: dict[str, Path], oracle: tuple[MultiAdapterModel, Any]
) -> None:
    """lora4 runs on both rows (max batch 2, 3 requests queued); during its third step an ia3 request is
    queued (from inside the step: no timing). The next step admits ia3 (one lora4 row is preempted) long
    before a lora4 row could finish, and every answer is still its adapter's own greedy answer alone."""
    multi, tok = oracle
    adapters = [f"{n}={causal_adapters[n]}" for n in ("lora4", "ia3")]
    with paged_client(model, base_model=str(llama_dir), adapters=adapters, max_batch_size=2) as (
        client,
        engine,
        plans,
    ):
        texts = {"lora4": [prompt(400 + i) for i in range(3)], "ia3": [prompt(500)]}
        step = engine.model.paged_step
        late: dict[str, Any] = {}

        def post_ia3() -> None:
            late["response"] = client.post("/generate", json=body(texts["ia3"][0], "ia3"))

        def arriving(plan: StepPlan) -> Any:
            if len(plans) == 2:  # the third step (the recording wrapper inside appends its plan next)
                thread = threading.Thread(target=post_ia3)
                thread.start()
                late["thread"] = thread
                with engine._cond:
                    assert engine._cond.wait_for(lambda: engine.queued() >= 2, 60), "ia3 was never queued"
            return step(plan)

        engine.model.paged_step = arriving
        out = all_at_once(client, engine, [body(t, "lora4") for t in texts["lora4"]])
        late["thread"].join(timeout=300)
        adapter_of = {c.seq_id: c.adapter.partition("@")[0] for p in plans for c in p.chunks}
        ia3_first = next(
            i for i, p in enumerate(plans) if any(adapter_of[c.seq_id] == "ia3" for c in p.chunks)
        )
        assert ia3_first == 3, f"ia3 first ran in step {ia3_first}, not the one after it arrived"
        assert counter(engine, "preemptions") == 1
        for text, response in zip(texts["lora4"], out):
            assert tokens(response) == reference_tokens(multi, tok, text, "lora4", NEW)
        assert tokens(late["response"]) == reference_tokens(multi, tok, texts["ia3"][0], "ia3", NEW)
