"""The paged engine core (issue 16): one forward per step over a packed token stream and a paged KV cache.

plan.py is the contract with the scheduler (`SeqChunk`, `StepPlan`); kv_cache.py holds the preallocated
per-layer block pool; attention.py attends each row over its own blocks; step.py runs a `StepPlan`.
"""

from .plan import VIRTUAL, SeqChunk, StepPlan

__all__ = ["VIRTUAL", "SeqChunk", "StepPlan"]
