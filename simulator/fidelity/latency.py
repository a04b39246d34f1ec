"""A latency backend wrapper that charges the real loop's host work per step by its kind."""
from __future__ import annotations

import numpy as np

from simulator.fidelity.microbench import overhead_at


class HostOverheadLatency:
    """A target latency backend plus the real loop's host work around each target forward.

    run_real's host work depends on what the step is: a decode step of b sequences samples b
    tokens (AR) or runs the acceptance rule for b sequences (SD, with gamma draft samplings),
    a prefill samples one token per prompt. A constant per-step overhead (the backend's
    step_overhead_s) would charge a prefill step like a decode step at the full concurrency.
    So the overhead is added per forward by its kind: a decode forward (every q equal to the
    strategy's query tokens and one logit per query token) pays overhead_at(host, mode, b); any
    other forward (prefill) pays overhead_at(host, "ar", 1) per sampled logit (one per prompt).
    Everything else is delegated to the wrapped backend, except the fast paths the engine may
    look up (forward_batch, forward_sums, forward_uniform, forward_mixed, forward_decode_many,
    decode_steps, decode_steps_many, ...: every name starting with `forward_` or `decode_steps`),
    which would bypass this forward."""

    _BYPASSES = ("forward_", "decode_steps")

    def __init__(self, inner, host: dict, mode: str, q_decode: int):
        self.inner, self.host, self.mode, self.q_decode = inner, host, mode, int(q_decode)
        self.step_overhead_s = 0.0
        self.source = inner.source
        self._prefill_s = overhead_at(host, "ar", 1)
        self._memo: dict[int, float] = {}

    def __getattr__(self, name):  # stats, profile, ... of the wrapped backend
        if name.startswith(self._BYPASSES):
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)

    def host_s(self, q: np.ndarray, n_logits: int) -> float:
        b = int(q.shape[0])
        if n_logits == b * self.q_decode and int(q.min()) == int(q.max()) == self.q_decode:
            v = self._memo.get(b)
            if v is None:
                v = self._memo[b] = overhead_at(self.host, self.mode, b)
            return v
        return n_logits * self._prefill_s

    def forward(self, q: np.ndarray, ctx: np.ndarray, n_logits: int) -> np.ndarray:
        t = np.array(self.inner.forward(q, ctx, n_logits), dtype=float)
        t[3] += self.host_s(q, n_logits)
        return t
