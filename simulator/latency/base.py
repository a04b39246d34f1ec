"""The latency interface every backend implements, and the breakdown it returns.

A forward pass is described by its batch: for each sequence i, q[i] new (query) tokens and
ctx[i] tokens already in its KV cache; the pass attends over ctx[i] + q[i] positions.
`n_logits` is how many positions go through the LM head (one per decoding sequence, q per
verifying sequence, one for a prefill chunk that completes its prompt, none otherwise).

Backends are bound to (model, gpu, tp, dtype) at construction and must be cheap to call: the
engine calls them once per forward pass with numpy arrays.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

# Order of the components in the array returned by LatencyModel.forward.
COMPONENTS = ("linear", "attention", "communication", "overhead")
LINEAR, ATTENTION, COMMUNICATION, OVERHEAD = range(4)

# Where a backend's numbers come from (reported in every summary as "latency_source").
SOURCES = ("measured", "derived", "roofline", "law")


class LatencyModel(Protocol):
    source: str  # one of SOURCES

    def forward(self, q: np.ndarray, ctx: np.ndarray, n_logits: int) -> np.ndarray:
        """Seconds for one forward pass, as an array over COMPONENTS (sum = wall time)."""
        ...


def decode_steps(model: LatencyModel, ctx: np.ndarray, steps: int, n_logits: int) -> np.ndarray:
    """Sum of `steps` successive single-token forwards (a draft proposing `steps` tokens).

    Backends may provide a faster `decode_steps` method; this is the generic definition.
    """
    fast = getattr(model, "decode_steps", None)
    if fast is not None:
        return fast(ctx, steps, n_logits)
    ones = np.ones(ctx.shape[0], np.int64)
    return sum((model.forward(ones, ctx + j, n_logits) for j in range(steps)), np.zeros(4))
