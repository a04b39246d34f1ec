"""Decoding strategies: what one engine step costs and what it emits for the decoding sequences.

The engine (engine.py) decides which sequences run in a step and how many prompt tokens each
prefill gets; a strategy says how many query tokens a decoding sequence puts in the target pass,
how many KV slots it reserves ahead, how long the step takes on the hardware, and how many
tokens each decoding sequence gets out of it. Each step: sample() draws the outcome first (it
can change the step's time, as in SSD), then step_time() prices it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.physics.acceptance import (sample_accepted, sample_accepted_per_position,
                                  sample_accepted_same_alpha, truncated_geometric_cdf)
from simulator.latency.base import LatencyModel, charge, decode_steps, forward_batch, plus


@dataclass
class Outcome:
    """What decoding sequences get from one step (before truncation to what they have left)."""

    tokens: np.ndarray | int  # emitted tokens per decoding sequence
    accepted: np.ndarray | None = None  # accepted draft tokens per decoding sequence


class StepBatch:
    """The sequences of one step that take part in the forward passes: the decoding sequences
    (each puts the strategy's query_tokens into the target pass; dec_ctx cached tokens each)
    and the prefill chunks that run (pre_q[i] prompt tokens over pre_ctx[i] cached).

    The engine keeps decoding sequences in numpy columns and the few prefill chunks in lists;
    backends that price a batch from its sums (the roofline) never need more. `q`, `ctx` and
    `is_dec` give the per-sequence arrays (decoding first) for the other backends and for SSD.
    """

    __slots__ = ("q_dec", "dec_ctx", "dec_ctx_sum", "n_dec", "pre_q", "pre_ctx", "n_pre_done",
                 "_arrays")

    def __init__(self, q_dec: int, dec_ctx: np.ndarray, dec_ctx_sum: int,
                 pre_q: list[int] = (), pre_ctx: list[int] = (), n_pre_done: int = 0):
        self.q_dec, self.dec_ctx, self.dec_ctx_sum = q_dec, dec_ctx, dec_ctx_sum
        self.n_dec = dec_ctx.shape[0]
        self.pre_q, self.pre_ctx, self.n_pre_done = pre_q, pre_ctx, n_pre_done
        self._arrays = None

    @classmethod
    def decoding(cls, q_dec: int, ctx: np.ndarray) -> "StepBatch":
        """A step in which every sequence decodes."""
        ctx = np.asarray(ctx, np.int64)
        return cls(q_dec, ctx, int(ctx.sum()))

    @property
    def all_decode(self) -> bool:
        return not self.pre_q

    def _build(self) -> tuple:
        if self._arrays is None:
            q = np.full(self.n_dec, self.q_dec, np.int64)
            ctx, is_dec = self.dec_ctx, np.ones(self.n_dec, bool)
            if self.pre_q:
                k = len(self.pre_q)
                q = np.concatenate([q, np.asarray(self.pre_q, np.int64)])
                ctx = np.concatenate([ctx, np.asarray(self.pre_ctx, np.int64)])
                is_dec = np.concatenate([is_dec, np.zeros(k, bool)])
            self._arrays = (q, ctx, is_dec)
        return self._arrays

    @property
    def q(self) -> np.ndarray:
        return self._build()[0]

    @property
    def ctx(self) -> np.ndarray:
        return self._build()[1]

    @property
    def is_dec(self) -> np.ndarray:
        return self._build()[2]


class Strategy:
    """Autoregressive decoding: one target forward per step, one token per decoding sequence."""

    name = "ar"
    query_tokens = 1
    lookahead = 0
    drafted_per_round = 0

    def __init__(self, target: LatencyModel):
        self.target = target
        self.target_busy = [0.0] * 4  # seconds per latency component
        self.draft_busy = [0.0] * 4

    def sample(self, rng: np.random.Generator, alpha: np.ndarray) -> Outcome:
        return Outcome(1)

    def target_time(self, b: StepBatch) -> float:
        t = forward_batch(self.target, self.query_tokens, b.dec_ctx, b.dec_ctx_sum, b.pre_q,
                          b.pre_ctx, b.n_dec * self.query_tokens + b.n_pre_done)
        return charge(self.target_busy, (t[0], t[1], t[2], t[3] + self.target.step_overhead_s))

    def step_time(self, b: StepBatch, out: Outcome) -> float:
        return self.target_time(b)

    def summary(self, replicas: list["Strategy"], duration: float) -> dict:
        """Strategy-specific metrics over all replicas' strategy objects (added to the summary)."""
        return {}


class SpeculativeStrategy(Strategy):
    """Standard speculative decoding with a colocated draft (Leviathan et al.): each step the
    draft proposes gamma tokens per decoding sequence (gamma draft forwards, new prompt chunks
    riding along in the first), then one target forward verifies gamma+1 positions each."""

    name = "sd"

    def __init__(self, target: LatencyModel, draft: LatencyModel, gamma: int,
                 alpha: float | None = None, per_position: list[float] | None = None,
                 draft_first_q: int = 1):
        """`alpha` set: every request shares it (fast path); None with no per_position: use the
        per-request alphas the engine passes to sample(). `draft_first_q`: query tokens per
        sequence in a round's first draft forward (1: the draft's KV holds every token but the
        pending one; 2: it lags by two, as simulator/real_engine.py keeps it so that an
        all-accepted round needs no extra draft pass, and the first step re-feeds the last two)."""
        if draft_first_q not in (1, 2):
            raise ValueError(f"draft_first_q must be 1 or 2, got {draft_first_q}")
        self.draft_first_q = draft_first_q
        super().__init__(target)
        self.draft, self.gamma = draft, gamma
        self.query_tokens = gamma + 1
        self.lookahead = gamma
        self.drafted_per_round = gamma
        self.per_position = None if per_position is None else np.asarray(per_position)
        self.cdf = None if alpha is None or alpha >= 1.0 else truncated_geometric_cdf(alpha, gamma)
        self.all_accepted = alpha is not None and alpha >= 1.0

    def sample(self, rng: np.random.Generator, alpha: np.ndarray) -> Outcome:
        if self.cdf is not None:
            k = sample_accepted_same_alpha(rng, self.cdf, alpha.shape[0])
        elif self.all_accepted:
            k = np.full(alpha.shape[0], self.gamma)
        elif self.per_position is not None:
            k = sample_accepted_per_position(rng, self.per_position, alpha.shape[0])
        else:
            k = sample_accepted(rng, alpha, self.gamma)
        return Outcome(k + 1, k)

    def draft_time(self, b: StepBatch) -> float:
        n, k, ctx, ctx_sum = b.n_dec, self.draft_first_q, b.dec_ctx, b.dec_ctx_sum
        if b.all_decode and k == 1:
            d = decode_steps(self.draft, ctx, self.gamma, n, ctx_sum)
        else:
            # The first draft forward: k tokens per decoding sequence, prompt chunks riding along.
            d = forward_batch(self.draft, k, ctx, ctx_sum, b.pre_q, b.pre_ctx, n + b.n_pre_done,
                              shift=k - 1)
            if n and self.gamma > 1:
                d = plus(d, decode_steps(self.draft, ctx, self.gamma - 1, n, ctx_sum, start=1))
        return charge(self.draft_busy, d)

    def step_time(self, b: StepBatch, out: Outcome) -> float:
        return self.draft_time(b) + self.target_time(b)


def make_strategy(dep) -> Strategy:
    """The strategy object for one replica of a resolved deployment (state is per replica)."""
    if dep.strategy == "ar":
        return Strategy(dep.target_latency)
    acc = dep.acceptance
    shared = acc.alpha if acc.alpha is not None and acc.heterogeneity is None else None
    if dep.strategy == "sd" and dep.draft_placement == "dedicated":
        from simulator.engine.strategies.ssd import DedicatedDraftSD
        return DedicatedDraftSD(dep.target_latency, dep.draft_latency, dep.gamma, dep.handshake,
                                shared, acc.per_position)
    if dep.strategy == "sd":
        return SpeculativeStrategy(dep.target_latency, dep.draft_latency, dep.gamma, shared,
                                   acc.per_position, dep.draft_first_q)
    if dep.strategy == "ssd":
        from simulator.engine.strategies.ssd import make_ssd_strategy
        return make_ssd_strategy(dep, shared)
    raise ValueError(f"unknown strategy {dep.strategy!r}")
