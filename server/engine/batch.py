"""One `Row` per generation request, from the queue to its last event. The running rows and their KV blocks
are engine/paged.py's `PagedBatch`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..sampling import RowSampler
from ..tokenization import IncrementalDecoder, Tokenization
from .scheduler import SeqState
from .types import (
    FinishEvent,
    FinishReason,
    GenerationRequest,
    PromptLogprob,
    PromptLogprobs,
    RequestHandle,
    TokenEvent,
)


@dataclass(eq=False)  # a row is an identity: two rows are never "equal"
class Row:
    """One generation request, from the queue to its last event.

    `seq` is its stream as the scheduler sees it (the engine appends every accepted token to `seq.stream`)."""

    request: GenerationRequest
    handle: RequestHandle
    sampler: RowSampler
    decoder: IncrementalDecoder
    seq: SeqState
    generated: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    failed: bool = False  # it got an ErrorEvent
    fair_seen: bool = False  # the fair queue noticed its arrival (engine/fairness.py)
    preempted: bool = False  # its KV blocks were taken back: it waits at the queue's front to be recomputed
    _stop_tail: str = ""  # the end of the output, as long as the longest stop string less one character
    # Per prompt token (with `request.prompt_logprobs`): None for the first, (logprob, top) once computed.
    prompt_logprobs: list[PromptLogprob | None] = field(default_factory=list)
    followers: list[Row] = field(
        default_factory=list
    )  # rows of its group waiting for its prompt (siblings.py)

    @property
    def tenant(self) -> str | None:
        """Whose share of the service it uses (engine/fairness.py): its adapter's public name."""
        return self.request.adapter

    @property
    def ended(self) -> bool:
        """It got its last event (a FinishEvent or an ErrorEvent)."""
        return self.finish_reason is not None or self.failed

    @property
    def done(self) -> bool:
        """It leaves the batch at the next schedule."""
        return self.ended or self.handle.cancelled

    def accept(self, token_id: int, logprob: float, tok: Tokenization) -> TokenEvent:
        """Record a sampled token, decide whether the row is finished, and return its event.

        The output ends at an end id (a stop token id, whose text is left out as a stop string's is, or the
        model's EOS unless `ignore_eos`; the sampler masks both until `min_tokens`, as vLLM), at a stop string,
        or at `max_new_tokens`."""
        self.generated.append(token_id)
        self.seq.stream.append(token_id)
        params = self.sampler.params
        stop_id = token_id in params.stop_token_ids
        text = "" if stop_id else self.decoder.push(token_id)
        if stop_id or (not params.ignore_eos and token_id in tok.eos_token_ids):
            self.finish_reason = "eos_token"
        elif self._scan_stops(text):
            self.finish_reason = "stop_sequence"
        elif len(self.generated) >= self.request.max_new_tokens:
            self.finish_reason = "length"
        if self.finish_reason is not None:
            text += self.decoder.flush()
        return TokenEvent(
            token_id,
            text,
            logprob,
            token_id in tok.special_ids,
            final=self.finish_reason is not None,
            top=self.sampler.top,
            prompt=self._prompt_logprobs() if len(self.generated) == 1 else None,
        )

    def _prompt_logprobs(self) -> PromptLogprobs | None:
        if not self.request.prompt_logprobs:
            return None
        return PromptLogprobs(list(self.request.input_ids), list(self.prompt_logprobs))

    def _scan_stops(self, new_text: str) -> bool:
        """Whether `new_text` completes a stop string. Only the tail can hold one that this token completed:
        the row keeps the last (longest stop - 1) characters, so the work per token stays bounded."""
        stops = self.request.stop
        if not stops or not new_text:
            return False
        window = self._stop_tail + new_text
        keep = max(len(s) for s in stops) - 1
        self._stop_tail = window[-keep:] if keep else ""
        return any(s in window for s in stops)

    def finish_event(self) -> FinishEvent:
        assert self.finish_reason is not None
        return FinishEvent(
            finish_reason=self.finish_reason,
            generated_text=self.decoder.text,
            generated_tokens=len(self.generated),
            prompt_tokens=len(self.request.input_ids),
            seed=self.sampler.seed,
        )
