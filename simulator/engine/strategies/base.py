"""What a decoding strategy is: the step batch it prices, the outcome it draws, and the
autoregressive strategy every other one extends.

The engine (simulator/engine/replica.py) decides which sequences run in a step and how many prompt tokens each
prefill gets; a strategy says how many query tokens a decoding sequence puts in the target pass,
how many KV slots it reserves ahead, how long the step takes on the hardware, and how many
tokens each decoding sequence gets out of it; step_time() prices a step.

Where a step's outcome depends only on each sequence's own draws (AR, SD), the draws are made per
request: when a request starts decoding, rounds() draws the tokens of each of its rounds until
its output is complete (the same distribution: rounds are independent), so the engine can know
its whole decode at once (simulator/engine/lazy_table.py). A strategy may also draw a mark per
round (marks(): SSD's cache misses), whose count in a step can change the step's time. Only
strategies whose outcome couples the batch's tokens (SSD with a fast backup) draw per step:
their sample() draws a step's outcome before step_time() prices it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.latency.base import (LatencyModel, charge, forward_decode_many, step_overhead_many,
                                    total)
from simulator.latency.pricing import step_pricer


@dataclass
class Outcome:
    """What decoding sequences get from one step (before truncation to what they have left)."""

    tokens: np.ndarray | int  # emitted tokens per decoding sequence
    accepted: np.ndarray | None = None  # accepted draft tokens per decoding sequence


_ONE = Outcome(1)  # every autoregressive step's outcome (shared: outcomes are never mutated)


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


class RunBatch:
    """A run of k successive all-decode steps of the same n sequences (simulator/engine/macro.py):
    each step's context sum and longest context, and row(j), the contexts of step j."""

    __slots__ = ("n", "q_dec", "ctx_sums", "ctx_max", "row", "pending")

    def __init__(self, n: int, q_dec: int, ctx_sums: np.ndarray, ctx_max: np.ndarray, row):
        self.n, self.q_dec, self.ctx_sums, self.ctx_max, self.row = n, q_dec, ctx_sums, ctx_max, row
        self.pending: list = []  # backends' per-step statistics (latency.base.forward_decode_many)


# A run's charges: accumulator name ("target" or "draft") -> 4 components, each an array over
# the run's steps or a constant; the engine adds them step by step when it applies the run.
Charges = dict


class Strategy:
    """Autoregressive decoding: one target forward per step, one token per decoding sequence."""

    name = "ar"
    query_tokens = 1
    lookahead = 0
    drafted_per_round = 0
    tokens_per_step = 1.0  # expected tokens a decoding sequence gets per step (runs' length guess)
    # The outcome of every step when it needs no draw (AR: one token each); None: per request
    # rounds (rounds()), or per step draws where per_step_outcomes.
    uniform: Outcome | None = _ONE
    per_step_outcomes = False  # outcomes drawn per step by sample() (they couple the batch)
    marked_rounds = False  # marks() draws a mark per round with each request's rounds

    def __init__(self, target: LatencyModel):
        self.target = target
        self.target_busy = [0.0] * 4  # seconds per latency component
        self.draft_busy = [0.0] * 4

    @property
    def target(self) -> LatencyModel:
        return self._target

    @target.setter
    def target(self, model: LatencyModel) -> None:
        # The backend's step pricing, bound once (simulator/latency/pricing.py).
        self._target = model
        p = step_pricer(model)
        self._target_forward, self._target_overhead = p.forward_batch, p.step_overhead
        self._cheap_target = p.from_sums

    @property
    def cheap_steps(self) -> bool:
        """Whether a step is priced from the batch's size and context sum by a memoised fast
        path (latency/pricing.py: the roofline, a mean-context profile; a microsecond or two)
        rather than the generic path over per-row contexts (5-10 us): the lazy decode table
        keeps no per-row contexts, and runs pay off sooner for the latter
        (simulator/engine/macro.py)."""
        return self._cheap_target

    @property
    def macro_safe(self) -> bool:
        """Whether steps depend only on the batch and each request's drawn rounds, so that the
        engine may advance a run of decode steps at once (simulator/engine/macro.py)."""
        return not self.per_step_outcomes

    def rounds(self, rng: np.random.Generator, alpha: float, rem: int) -> tuple:
        """The rounds of one request that starts decoding with `rem` tokens left, drawn now:
        the tokens each round gives (before the last is truncated to rem; just enough rounds
        for rem), and the tokens out before each round and after the last (f + 1 rounds, f + 2
        running sums from 0). Read-only: they may be views of arrays other requests share.
        AR: one token a round, nothing drawn (views of a ones and a 0, 1, 2, .. array)."""
        if rem >= self._ones.shape[0]:
            size = max(2 * self._ones.shape[0], rem + 1)
            self._ones, self._upto = np.ones(size, np.int64), np.arange(size + 1, dtype=np.int64)
            self._ones.flags.writeable = self._upto.flags.writeable = False
        return self._ones[:rem], self._upto[:rem + 1]

    _ones = _upto = np.zeros(0, np.int64)  # rounds()'s shared arrays, grown per instance

    # Per-round marks (drawn with a request's rounds, right after them): None where the
    # strategy draws none.
    def marks(self, rng: np.random.Generator, tok: np.ndarray) -> np.ndarray | None:
        """0/1 per round of the rounds `tok` just drawn (see SSDStrategy), or None."""
        return None

    def outcome_at(self, tok: np.ndarray, marked: np.ndarray | None) -> Outcome:
        """A step's outcome from each decoding row's round: its tokens and, where the strategy
        draws marks, which rows' rounds are marked."""
        return Outcome(tok, tok - 1)

    def outcome_counted(self, n: int, marked: int) -> Outcome | None:
        """A step's outcome on the lazy table, which keeps each step's count of marked rounds
        rather than the rows' tokens (None where the strategy draws no marks)."""
        return None

    def target_time(self, b: StepBatch, gpu_before: float = 0.0) -> float:
        """The target's forward of this step plus the step's engine overhead (charged here, once
        per step). gpu_before: GPU seconds of the step spent before it (the draft's), which CPU
        work that overlaps the GPU hides behind."""
        q = self.query_tokens
        sampled = b.n_dec * q + b.n_pre_done
        t = self._target_forward(q, b.dec_ctx, b.dec_ctx_sum, b.pre_q, b.pre_ctx, sampled)
        so = self._target_overhead(b.n_dec + len(b.pre_q), b.n_dec * q + sum(b.pre_q), sampled,
                                   b.n_dec if q > 1 else 0, q - 1,
                                   gpu_before + t[0] + t[1] + t[2] + t[3])
        return charge(self.target_busy, (t[0], t[1], t[2], t[3] + so))

    def step_time(self, b: StepBatch, out: Outcome) -> float:
        return self.target_time(b)

    # ---- runs of decode steps (simulator/engine/macro.py) -------------------------------------
    def _target_many(self, r: RunBatch, gpu_before=0.0):
        """target_time's breakdown for each step of a run (None: price step by step)."""
        q, n = self.query_tokens, r.n
        sampled = n * q
        t = forward_decode_many(self.target, q, n, r.ctx_sums, sampled, 0, r.ctx_max, r.pending)
        if t is None:
            return None
        gpu = gpu_before + t[0] + t[1] + t[2] + t[3]
        so = step_overhead_many(self.target, n, n * q, sampled, n if q > 1 else 0, q - 1, gpu)
        return (t[0], t[1], t[2], t[3] + so)

    def run_times_many(self, r: RunBatch) -> tuple[np.ndarray, Charges] | None:
        """Each step's seconds and charges, priced for the whole run at once; None when a
        backend cannot."""
        t = self._target_many(r)
        return None if t is None else (total(t), {"target": t})

    def run_times(self, r: RunBatch) -> tuple[np.ndarray, Charges]:
        """Each step's seconds (equal, bit for bit, to step_time's) and the charges the engine
        adds when it applies the steps: at once when the backends can, else step by step."""
        got = self.run_times_many(r)
        if got is not None:
            k = r.ctx_sums.shape[0]
            return np.broadcast_to(np.asarray(got[0], float), (k,)), got[1]
        saved, dts, parts = (self.target_busy, self.draft_busy), [], {"target": [], "draft": []}
        try:
            for j in range(r.ctx_sums.shape[0]):
                self.target_busy, self.draft_busy = [0.0] * 4, [0.0] * 4
                b = StepBatch(r.q_dec, r.row(j), int(r.ctx_sums[j]))
                dts.append(self.step_time(b, None))
                parts["target"].append(self.target_busy)
                parts["draft"].append(self.draft_busy)
        finally:
            self.target_busy, self.draft_busy = saved
        return np.array(dts), {k: tuple(np.array(v).T) for k, v in parts.items()}

    def summary(self, replicas: list["Strategy"], duration: float) -> dict:
        """Strategy-specific metrics over all replicas' strategy objects (added to the summary)."""
        return {}
