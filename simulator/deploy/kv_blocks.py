"""KV block accounting shared by the fit check (simulator/deploy/fit.py) and the engine
(simulator/engine/replica.py), so that what the check admits is exactly what the engine can hold.

A decoding row reserves its cached context plus the step's query slots (1 for AR, gamma + 1
verify positions for SD/SSD) plus the lookahead slots the draft writes (gamma), in whole blocks:
vLLM's spec-decode scheduler appends `num_lookahead_slots` per running sequence
(vllm/core/scheduler.py v0.6 `_append_slots`). A prefill row holds its computed prompt blocks.
"""
from __future__ import annotations

import numpy as np


def decode_slots(gamma: int) -> tuple[int, int]:
    """(query tokens, lookahead slots) of one decoding row per step; gamma 0 is AR."""
    return gamma + 1, gamma


def decode_row_blocks(ctx, query: int, lookahead: int, block_size: int):
    """Blocks a decoding row with `ctx` cached tokens reserves for one step (int or int array)."""
    return (ctx + (query + lookahead + block_size - 1)) // block_size


def blocks_for(tokens, block_size: int):
    """Whole blocks holding `tokens` (a prefill row, an admitted prompt)."""
    return -(-tokens // block_size)


def total_blocks(kv_capacity_tokens: int, block_size: int) -> int:
    return kv_capacity_tokens // block_size


def admission_limit(blocks_total: int, watermark: float) -> int:
    """Blocks admission may fill: vLLM v0 keeps a watermark fraction free
    (vllm/core/block_manager.py v0.6 `can_allocate`)."""
    return blocks_total - int(watermark * blocks_total)


def request_peak_blocks(prompt: np.ndarray, output: np.ndarray, gamma: int,
                        block_size: int) -> np.ndarray:
    """The most blocks each request ever holds: its last decode step, at which the cache holds
    prompt + output - 2 tokens (the pending token is not cached yet and at least one token is
    still to come), or its prompt when it emits a single token. A recompute after preemption
    (prompt + g tokens, g <= output - 1) never holds more."""
    q, la = decode_slots(gamma)
    decode = decode_row_blocks(prompt + output - 2, q, la, block_size)
    return np.where(output <= 1, blocks_for(prompt, block_size), decode)


def largest_prefill_tokens(prompt: np.ndarray, output: np.ndarray) -> int:
    """Tokens of the largest (re)prefill: a request preempted after generating g tokens
    recomputes prompt + g of them, g <= output - 1."""
    return int((prompt + np.maximum(output - 1, 0)).max())
