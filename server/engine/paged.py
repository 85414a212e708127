"""The engine's running rows: their KV blocks (adapters_core/paged/blocks.py), the scheduler's decisions
(engine/scheduler.py) and the `StepPlan` each step hands to `model.paged_step` (adapters_core/paged/plan.py).

How big the pool is (`PagingConfig.num_blocks`): `--kv-cache-bytes` when given; else, on a GPU, half of the
device memory free once the base is loaded (server/budget.py splits it with the adapter pools), and on the
CPU 1 GiB. Without an explicit `--kv-cache-bytes`, the pool is capped at
what `max_batch_size` rows of `--max-total-tokens` positions need, twice over (the second half keeps prompt
prefixes cached): more could never be used at once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapters_core.paged.blocks import BlockPool, KVBlocks
from adapters_core.paged.plan import VIRTUAL, SeqChunk, StepPlan

from ..budget import free_device_bytes, kv_default_bytes
from ..errors import InvalidInputError
from ..settings import Settings
from .batch import Row
from .fairness import VirtualTokenCounter
from .scheduler import Chunk, Scheduler, SeqState, StepSchedule

log = logging.getLogger("swapyard.engine")
CPU_BATCH_TOKENS, GPU_BATCH_TOKENS = 512, 2048  # --max-batch-tokens defaults
# --max-prefill-tokens-while-decoding on the CPU (bench/README.md "The engine end to end": 64 keeps the running
# rows' inter-token p99 within 2x while a 1,500-token prompt is admitted, 128 does not; throughput unchanged)
CPU_PREFILL_WHILE_DECODING = 64


@dataclass(frozen=True)
class PagingConfig:
    """The paged engine's knobs: `--kv-cache-bytes` (None: see the module docstring), `--max-batch-tokens`
    (None: 512 on the CPU, 2,048 on a GPU; more tokens per step is more throughput but a longer pause for the
    running rows while a prompt is prefilled), `--kv-block-size` and `--max-prefill-tokens-while-decoding`
    (None: 64 on the CPU, no cap on a GPU)."""

    kv_cache_bytes: int | None = None
    max_batch_tokens: int | None = None
    block_size: int = 16
    prefill_while_decoding: int | None = None
    cuda_graphs: bool = True  # --cuda-graphs: decode-only steps as CUDA graphs (engine/paged_path.py)

    @classmethod
    def from_settings(cls, settings: Settings) -> PagingConfig:
        return cls(
            settings.kv_cache_bytes,
            settings.max_batch_tokens,
            settings.kv_block_size,
            settings.max_prefill_tokens_while_decoding,
            settings.cuda_graphs,
        )

    def batch_tokens(self, device: torch.device) -> int:
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return GPU_BATCH_TOKENS if device.type == "cuda" else CPU_BATCH_TOKENS

    def prefill_tokens_while_decoding(self, device: torch.device) -> int | None:
        if self.prefill_while_decoding is not None:
            return self.prefill_while_decoding
        return None if device.type == "cuda" else CPU_PREFILL_WHILE_DECODING

    def num_blocks(self, model: Any, device: torch.device, max_rows: int, max_total_tokens: int) -> int:
        """Blocks of the KV pool (reserved ones included)."""
        block_bytes = model.kv_block_bytes(self.block_size)
        reserved = model.reserved_blocks
        if self.kv_cache_bytes is not None:
            num = self.kv_cache_bytes // block_bytes
        else:
            budget = kv_default_bytes(free_device_bytes(device))  # the split: server/budget.py
            per_row = -(-max_total_tokens // self.block_size)
            num = min(budget // block_bytes, reserved + 2 * max_rows * per_row)
        if num <= reserved:
            raise ValueError(
                f"--kv-cache-bytes {self.kv_cache_bytes or 'default'} holds {num} KV block(s) of "
                f"{block_bytes} bytes ({self.block_size} positions), {reserved} of them reserved: none left for "
                "rows. Raise --kv-cache-bytes or lower --kv-block-size."
            )
        return num


def new_seq(
    model: Any,
    seq_id: int,
    input_ids: list[int],
    model_name: str | None,
    prompt_logits: bool = False,
) -> SeqState:
    """A row's stream: its adapter's virtual positions, then its prompt.
    An encoder-decoder's stream is its decoder's (`[decoder_start_token_id]`, then what it generates): the
    prompt goes to the encoder (`SeqChunk.encoder_ids`), and the prefix-cache key names the encoder input, since
    the decoder's keys and values depend on it."""
    virtual = model.stream_prefix_length(model_name)
    key = model.adapters[model_name].content_hash if model_name is not None else ""
    stream = [VIRTUAL] * virtual + list(input_ids)
    decoder = _decoder_prompt(model)
    if decoder is not None:
        stream = list(decoder)
        key += "|encoder:" + hashlib.sha256(repr(list(input_ids)).encode()).hexdigest()
    return SeqState(seq_id, model_name, key, stream, prompt_len=len(stream), prompt_logits=prompt_logits)


def _decoder_prompt(model: Any) -> list[int] | None:
    """The decoder stream an encoder-decoder's rows start with; None for decoder-only bases."""
    ask = getattr(model, "paged_decoder_prompt", None)
    return None if ask is None else ask()


class PagedBatch:
    """The running rows and the KV blocks they hold."""

    def __init__(
        self,
        model: Any,
        config: PagingConfig,
        fairness: VirtualTokenCounter,
        *,
        device: torch.device,
        max_rows: int,
        max_total: int,
    ) -> None:
        num_blocks = config.num_blocks(model, device, max_rows, max_total)
        model.init_kv_cache(num_blocks, config.block_size)
        self.model = model
        self.encoder_decoder = _decoder_prompt(model) is not None  # chunks carry the encoder input
        self.blocks = KVBlocks(BlockPool(num_blocks, config.block_size, reserved=model.reserved_blocks))
        self.scheduler: Scheduler[Row] = Scheduler(
            self.blocks,
            fairness,
            max_batch_tokens=config.batch_tokens(device),
            max_rows=max_rows,
            prefill_while_decoding=config.prefill_tokens_while_decoding(device),
        )
        self.rows: list[Row] = []
        self.block_bytes = model.kv_block_bytes(config.block_size)
        self.positions = self.blocks.pool.capacity * config.block_size
        log.info(
            "paged KV cache: %d blocks of %d positions (%d positions), %d tokens per step",
            num_blocks,
            config.block_size,
            self.positions,
            self.scheduler.max_batch_tokens,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def new_seq(
        self, seq_id: int, input_ids: list[int], model_name: str | None, prompt_logits: bool = False
    ) -> SeqState:
        """`new_seq`, with an encoder-decoder row's encoder keys/values (kept by the model outside the pool)
        charged to the pool as `reserved_blocks`: whole blocks of their bytes, held while the row runs."""
        seq = new_seq(self.model, seq_id, input_ids, model_name, prompt_logits)
        if self.encoder_decoder:
            encoder = self.model.paged_encoder_bytes(model_name, len(input_ids))
            seq.reserved_blocks = -(-encoder // self.block_bytes)
        return seq

    def check_fits(self, seq: SeqState, new_tokens: int) -> None:
        """422 when one row alone could never fit in the KV pool."""
        bs = self.blocks.block_size
        need = len(seq.stream) + new_tokens + seq.reserved_blocks * bs
        if need > self.positions:
            encoder = " and its encoder's keys/values" if seq.reserved_blocks else ""
            raise InvalidInputError(
                f"the request needs {need} positions of KV cache (its prompt and virtual tokens{encoder}, plus "
                f"max_new_tokens), more than the whole cache holds ({self.positions}); ask for fewer tokens, or "
                "start the server with a larger --kv-cache-bytes"
            )

    def release(self, row: Row) -> None:
        self.blocks.free(row.seq.seq_id)
        self._release_encoder(row)

    def _release_encoder(self, row: Row) -> None:
        """An encoder-decoder row's encoder keys/values (kept by the model, outside the pool) go too."""
        if self.encoder_decoder:
            self.model.paged_release(row.seq.seq_id)

    def keep_running(self) -> list[Row]:
        """Drop the rows that are done (their blocks are freed) and return them."""
        gone = [row for row in self.rows if row.done]
        for row in gone:
            self.release(row)
        self.rows = [row for row in self.rows if not row.done]
        return gone

    def clear(self) -> None:
        for row in self.rows:
            self.release(row)
        self.rows = []

    def schedule(self, waiting: Any) -> StepSchedule[Row]:
        out = self.scheduler.schedule(self.rows, waiting)
        for row in out.preempted:  # re-encoded when the row comes back
            self._release_encoder(row)
        return out

    def plan(self, chunks: Sequence[Chunk[Row]]) -> StepPlan:
        bs = self.blocks.block_size
        out = []
        for chunk in chunks:
            seq = chunk.row.seq
            end = chunk.start + chunk.count
            table = self.blocks.table(seq.seq_id)[: -(-end // bs)]
            tokens = seq.stream[chunk.start : end]
            every = seq.prompt_logits and chunk.start < seq.prompt_len
            encoder = tuple(chunk.row.request.input_ids) if self.encoder_decoder else None
            out.append(
                SeqChunk(seq.seq_id, seq.adapter, tokens, chunk.start, table, chunk.last, every, encoder)
            )
        return StepPlan(out)

    def commit(self, chunk: Chunk[Row]) -> None:
        """The chunk ran: its positions hold keys and values now; newly full blocks join the prefix cache."""
        seq = chunk.row.seq
        seq.computed = chunk.start + chunk.count
        self.blocks.commit(seq.seq_id, seq.adapter_key, seq.stream, seq.computed)
