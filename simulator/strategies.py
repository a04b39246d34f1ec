"""Decoding strategies: what one engine step costs and what it emits for the decoding sequences.

The engine (engine.py) decides which sequences run in a step and how many prompt tokens each
prefill gets; a strategy says how many query tokens a decoding sequence puts in the target pass,
how many KV slots it reserves ahead, how long the step takes on the hardware, and how many
tokens each decoding sequence gets out of it. Each step: sample() draws the outcome first (it
can change the step's time, as in SSD), then step_time() prices it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from simulator.acceptance import (sample_accepted, sample_accepted_per_position,
                                  sample_accepted_same_alpha, truncated_geometric_cdf)
from simulator.latency.base import LatencyModel, decode_steps


@dataclass
class Outcome:
    """What decoding sequences get from one step (before truncation to what they have left)."""

    tokens: np.ndarray | int  # emitted tokens per decoding sequence
    accepted: np.ndarray | None = None  # accepted draft tokens per decoding sequence


@dataclass
class StepBatch:
    """The sequences of one step that take part in the forward passes."""

    q: np.ndarray  # query tokens per sequence in the target pass
    ctx: np.ndarray  # tokens already in each sequence's KV cache
    is_dec: np.ndarray  # decoding (True) or prefilling (False)
    n_dec: int
    n_pre_done: int  # prefill chunks that complete their prompt (go through the LM head)

    @property
    def all_decode(self) -> bool:
        """Every sequence decodes (each puts the strategy's query_tokens into the target pass)."""
        return self.n_dec == self.q.shape[0]

    @cached_property
    def ctx_sum(self) -> float:
        return float(self.ctx.sum())


class Strategy:
    """Autoregressive decoding: one target forward per step, one token per decoding sequence."""

    name = "ar"
    query_tokens = 1
    lookahead = 0
    drafted_per_round = 0

    def __init__(self, target: LatencyModel):
        self.target = target
        # Backends that price a uniform decode batch from its sums (roofline): the fast path.
        self._target_uniform = getattr(target, "decode_batch", None)
        self.target_busy = np.zeros(4)  # seconds per latency component
        self.draft_busy = np.zeros(4)

    def sample(self, rng: np.random.Generator, alpha: np.ndarray) -> Outcome:
        return Outcome(1)

    def target_time(self, b: StepBatch) -> float:
        n_logits = b.n_dec * self.query_tokens + b.n_pre_done
        if self._target_uniform is not None and b.all_decode:
            t = self._target_uniform(b.n_dec, self.query_tokens, b.ctx_sum, n_logits)
        else:
            t = self.target.forward(b.q, b.ctx, n_logits)
        t[3] += self.target.step_overhead_s
        self.target_busy += t
        return float(t.sum())

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
        if b.all_decode and self.draft_first_q > 1:
            k = self.draft_first_q
            d = self.draft.forward(np.full(b.n_dec, k), np.maximum(b.ctx - (k - 1), 0), b.n_dec)
            if self.gamma > 1:
                d = d + decode_steps(self.draft, b.ctx + 1, self.gamma - 1, b.n_dec)
        elif b.all_decode:
            d = decode_steps(self.draft, b.ctx, self.gamma, b.n_dec)
        else:
            d = self.draft.forward(np.where(b.is_dec, 1, b.q), b.ctx, b.n_dec + b.n_pre_done)
            if b.n_dec and self.gamma > 1:
                d = d + decode_steps(self.draft, b.ctx[b.is_dec] + 1, self.gamma - 1, b.n_dec)
        self.draft_busy += d
        return float(d.sum())

    def step_time(self, b: StepBatch, out: Outcome) -> float:
        return self.draft_time(b) + self.target_time(b)


def make_strategy(dep) -> Strategy:
    """The strategy object for one replica of a resolved deployment (state is per replica)."""
    if dep.strategy == "ar":
        return Strategy(dep.target_latency)
    acc = dep.acceptance
    shared = acc.alpha if acc.alpha is not None and acc.heterogeneity is None else None
    if dep.strategy == "sd" and dep.draft_placement == "dedicated":
        from simulator.ssd import DedicatedDraftSD
        return DedicatedDraftSD(dep.target_latency, dep.draft_latency, dep.gamma, dep.handshake,
                                shared, acc.per_position)
    if dep.strategy == "sd":
        return SpeculativeStrategy(dep.target_latency, dep.draft_latency, dep.gamma, shared,
                                   acc.per_position, dep.draft_first_q)
    if dep.strategy == "ssd":
        from simulator.ssd import make_ssd_strategy
        return make_ssd_strategy(dep, shared)
    raise ValueError(f"unknown strategy {dep.strategy!r}")
