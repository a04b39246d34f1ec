"""Standard speculative decoding with a colocated draft (Leviathan et al., MODEL.md section 3)."""
from __future__ import annotations

import numpy as np

from simulator.engine.strategies.base import Outcome, RunBatch, StepBatch, Strategy
from simulator.latency.base import (LatencyModel, charge, decode_steps_many, forward_decode_many,
                                    plus, total)
from simulator.latency.pricing import step_pricer
from simulator.physics.acceptance import (expected_tokens_per_position, expected_tokens_per_round,
                                          sample_accepted, sample_accepted_per_position,
                                          sample_accepted_same_alpha, truncated_geometric_cdf)
from simulator.physics.rounds import sd_round


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
        pending one; 2: it lags by two, as simulator/measure/real_engine.py keeps it so that an
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
        self._all = Outcome(gamma + 1, gamma)
        self.uniform = self._all if self.all_accepted and not self.per_step_outcomes else None
        self._pool, self._sums = np.zeros(0, np.int64), np.zeros(1, np.int64)  # rounds()'s pool
        self._pos = 0
        # E[K+1] (Leviathan); with per-request alphas a middle guess: it only sizes runs.
        self.tokens_per_step = (expected_tokens_per_position(self.per_position)
                                if self.per_position is not None else
                                expected_tokens_per_round(alpha, gamma) if alpha is not None
                                else 1.0 + gamma / 2.0)

    POOL = 1 << 14  # rounds drawn at once where every request draws from the same law

    def rounds(self, rng: np.random.Generator, alpha: float, rem: int) -> tuple:
        """Strategy.rounds, a round giving accepted + 1 tokens. Where every request draws from
        the same law (one alpha, or per-position rates), rounds come from a pool drawn POOL at
        a time and taken in order:
        the same independent rounds, with the pool's running sums instead of a draw and a
        cumulative sum per request. With per-request alphas, drawn for the request in blocks
        a little longer than needed."""
        if self.all_accepted or (self.cdf is None and self.per_position is None):
            tok = self._draw(rng, alpha, rem)
            before = np.zeros(tok.shape[0] + 1, np.int64)
            np.cumsum(tok, out=before[1:])
            return tok, before
        pos, sums = self._pos, self._sums
        base = sums.item(pos)
        end = int(sums.searchsorted(base + rem)) - 1  # the round that reaches rem
        while end == sums.shape[0] - 1:  # the pool ran out: keep its rest, draw more
            self._refill(rng)
            pos, sums, base = 0, self._sums, 0
            end = int(sums.searchsorted(rem)) - 1
        self._pos = end + 1
        before = sums[pos:end + 2] - base
        return self._pool[pos:end + 1], before

    def _draw(self, rng: np.random.Generator, alpha: float, rem: int) -> np.ndarray:
        """One request's rounds drawn for it alone (see rounds())."""
        if self.all_accepted:
            return np.full(-(-rem // (self.gamma + 1)), self.gamma + 1, np.int64)
        per, parts, got = expected_tokens_per_round(alpha, self.gamma), [], 0
        while got < rem:
            m = int((rem - got) / per * 1.25) + 4
            parts.append(sample_accepted(rng, np.array([alpha]), self.gamma, rounds=m)[:, 0] + 1)
            got += int(parts[-1].sum())
        tok = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return tok[:int(np.cumsum(tok).searchsorted(rem)) + 1]

    def _refill(self, rng: np.random.Generator) -> None:
        k = (sample_accepted_same_alpha(rng, self.cdf, self.POOL) if self.cdf is not None
             else sample_accepted_per_position(rng, self.per_position, self.POOL))
        self._pool = np.concatenate([self._pool[self._pos:], k + 1])
        self._sums = np.zeros(self._pool.shape[0] + 1, np.int64)  # tokens before each round
        np.cumsum(self._pool, out=self._sums[1:])
        self._pos = 0

    def _draft_many(self, r: RunBatch):
        """draft_time's breakdown for each step of a run of decode steps (None: step by step)."""
        n, k = r.n, self.draft_first_q
        if k == 1:
            return decode_steps_many(self.draft, n, r.ctx_sums, self.gamma, n, 0, r.ctx_max)
        d = forward_decode_many(self.draft, k, n, r.ctx_sums, n, k - 1, r.ctx_max, r.pending)
        if d is None or self.gamma <= 1:
            return d
        e = decode_steps_many(self.draft, n, r.ctx_sums, self.gamma - 1, n, 1, r.ctx_max)
        return None if e is None else plus(d, e)

    def run_times_many(self, r: RunBatch):
        d = self._draft_many(r)
        if d is None:
            return None
        ds = total(d)
        t = self._target_many(r, ds)
        return None if t is None else (sd_round(ds, total(t)), {"target": t, "draft": d})

    @property
    def draft(self) -> LatencyModel:
        return self._draft

    @draft.setter
    def draft(self, model: LatencyModel) -> None:
        self._draft = model  # and its step pricing, bound once (simulator/latency/pricing.py)
        p = step_pricer(model)
        self._draft_forward, self._draft_decode = p.forward_batch, p.decode_steps
        self._cheap_draft = p.from_sums

    @property
    def cheap_steps(self) -> bool:
        return self._cheap_target and self._cheap_draft

    def draft_time(self, b: StepBatch) -> float:
        n, k, ctx, ctx_sum = b.n_dec, self.draft_first_q, b.dec_ctx, b.dec_ctx_sum
        if not b.pre_q and k == 1:
            d = self._draft_decode(ctx, self.gamma, n, ctx_sum)
        else:
            # The first draft forward: k tokens per decoding sequence, prompt chunks riding along.
            d = self._draft_forward(k, ctx, ctx_sum, b.pre_q, b.pre_ctx, n + b.n_pre_done, k - 1)
            if n and self.gamma > 1:
                d = plus(d, self._draft_decode(ctx, self.gamma - 1, n, ctx_sum, 1))
        return charge(self.draft_busy, d)

    def step_time(self, b: StepBatch, out: Outcome) -> float:
        d = self.draft_time(b)
        return sd_round(d, self.target_time(b, d))
