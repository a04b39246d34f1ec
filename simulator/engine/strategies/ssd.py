"""The SSD pre-speculation strategy (speculative speculative decoding, MODEL.md section 4); its
laws (hit-rate model, fan-out policies, Theorem 7) are in simulator/physics/ssd.py.

Source: Kumar, Dao, May, "Speculative Speculative Decoding" (ICLR 2026, arXiv 2603.03251).
The target runs tensor-parallel on its GPUs, the draft on its own dedicated GPU(s). While the
target verifies round i, the draft guesses the outcome (k accepted, bonus token): for every
stopping point k = 0..gamma it keeps F_k bonus candidates and drafts gamma tokens ahead for each
branch (one "glue" forward over the gamma+1 positions, then gamma tree-decode steps over
batch * sum(F_k) branches). Miss model: P(miss | F) = F^(-r), so given the round's accepted
count K the next round's draft is ready with probability 1 - F_K^(-r).

Reading of the reference implementation used for time (one engine step = one round):
- all sequences hit (cache used):       max(T_verify, T_glue + T_tree) + T_handshake
- the round needs a backup (a miss):    T_verify + T_backup + T_handshake
  (the draft drops its tree when the verify result arrives, so its busy time stays within the
   round's)
  (per_sequence policy with some hits:  max(T_verify, T_glue + T_tree) + T_backup + T_handshake,
   since the hits' drafts come from the tree)
- jit backup: the draft runs gamma decode steps for the re-drafted sequences (all of them under
  all_or_nothing, the misses under per_sequence); the round still yields K+1 tokens for them.
- fast backup: random draft tokens, no draft time; the round yields one token for them.
The hit and the accepted count are charged to the same step (the backup delays the next verify,
which in steady state costs the same time per round). Under a jit backup with whole-batch
re-drafts (the defaults) a round's tokens are each sequence's own and only the step's count of
misses couples the batch, so each round's hit is drawn with the request's rounds (marks()) and
the engine keeps per-step miss counts; a fast backup or per-sequence re-drafts draw per step.

Tree-decode steps are priced by the draft's latency backend with one query per branch and each
branch's own context (ctx + k + 1 + step): KV reads of the shared prefix are not deduplicated,
which is conservative at long context.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.engine.strategies.base import Outcome, StepBatch, Strategy
from simulator.engine.strategies.dedicated import DedicatedDraftSD
from simulator.latency.base import LatencyModel, charge, plus
from simulator.physics.acceptance import (sample_accepted, sample_accepted_per_position,
                                          sample_accepted_same_alpha)
from simulator.physics.handshake import Handshake
from simulator.physics.rounds import ssd_round
from simulator.physics.ssd import (hit_given_stop, hit_probability, optimal_fanout,
                                   stop_distribution, stop_distribution_per_position, uniform_fanout)


@dataclass
class SSDOutcome(Outcome):
    hit: np.ndarray | None = None  # per decoding sequence: its outcome was in the cache
    redraft: np.ndarray | None = None  # sequences the backup re-drafts
    fast: bool = False  # the backup is random tokens (no draft time)
    n_redraft: int | None = None  # how many (default: counted from redraft)

    def __post_init__(self):
        if self.n_redraft is None:
            self.n_redraft = np.count_nonzero(self.redraft)


class SSDStrategy(DedicatedDraftSD):
    """SSD pre-speculation (see the module docstring for the round-time model). Accepted counts
    are sampled as in standard SD (`alpha` shared, or the per-request alphas, or per-position)."""

    name = "ssd"
    # A round's time depends on its hits: the engine runs SSD one step per event.
    macro_safe = False

    def __init__(self, target: LatencyModel, draft: LatencyModel, gamma: int, fanout: np.ndarray,
                 r: float, handshake: Handshake, batch_policy: str = "all_or_nothing",
                 backup: str = "jit", backup_batch_threshold: int | None = None,
                 alpha: float | None = None, per_position: list[float] | None = None,
                 p_stop: np.ndarray | None = None):
        # With a jit backup and whole-batch re-drafts, a round's tokens are each sequence's own
        # and only the count of misses couples the batch: hits are drawn per request with its
        # rounds (marks()). A fast backup (one token for re-drafted sequences) couples the
        # tokens; per-sequence re-drafts need the missed rows' contexts: drawn per step.
        self.per_step_outcomes = not (batch_policy == "all_or_nothing" and backup == "jit"
                                      and backup_batch_threshold is None)
        super().__init__(target, draft, gamma, handshake, alpha, per_position)
        self.uniform = None  # (even with every draft accepted, hits are drawn)
        self.marked_rounds = not self.per_step_outcomes
        self.fanout = np.asarray(fanout, np.int64)
        if self.fanout.shape != (gamma + 1,) or (self.fanout < 1).any():
            raise ValueError(f"fanout needs gamma + 1 = {gamma + 1} entries >= 1, got {fanout}")
        self.r = r
        self.p_hit_k = hit_given_stop(self.fanout, r)
        self.p_stop = p_stop  # for the model's expected hit rate in the summary
        self.all_or_nothing = batch_policy == "all_or_nothing"
        self.backup, self.threshold = backup, backup_batch_threshold
        self.branches = int(self.fanout.sum())
        # Context offset of each branch of one sequence: stopping point k -> k accepted + bonus.
        self.branch_offset = np.repeat(np.arange(gamma + 1) + 1, self.fanout)
        self._offset_sum = int(self.branch_offset.sum())
        self._zeros = np.zeros(0, np.int64)
        self.seq_rounds = 0
        self.seq_hits = 0
        self.step_rounds = 0  # rounds (steps) counted
        self.cache_rounds = 0  # rounds in which no sequence needed a backup
        self.fast_rounds = 0
        # Per batch size n (decoding sequences): rounds, and rounds that used the cache.
        self.rounds_by_size: dict[int, list[int]] = {}

    def accepted(self, rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
        """Accepted draft tokens of one round, per decoding sequence (drawn per step: SSD's
        outcomes couple the batch through its cache hits)."""
        if self.cdf is not None:
            return sample_accepted_same_alpha(rng, self.cdf, alpha.shape[0])
        if self.all_accepted:
            return np.full(alpha.shape[0], self.gamma)
        if self.per_position is not None:
            return sample_accepted_per_position(rng, self.per_position, alpha.shape[0])
        return sample_accepted(rng, alpha, self.gamma)

    def sample(self, rng: np.random.Generator, alpha: np.ndarray) -> SSDOutcome:
        n = alpha.shape[0]
        k = self.accepted(rng, alpha)
        hit = rng.random(n) < self.p_hit_k[k]
        hits = np.count_nonzero(hit)
        full = hits == n
        redraft = np.zeros(n, bool) if full else (np.ones(n, bool) if self.all_or_nothing else ~hit)
        fast = self.backup == "fast" or (self.threshold is not None and n > self.threshold)
        tokens, accepted = k + 1, k
        if fast and not full:
            tokens, accepted = np.where(redraft, 1, tokens), np.where(redraft, 0, accepted)
        self._count(n, n - hits, fast)
        return SSDOutcome(tokens, accepted, hit, redraft, fast,
                          0 if full else n if self.all_or_nothing else n - hits)

    def _count(self, n: int, misses: int, fast: bool = False) -> None:
        """One round's statistics: n sequences, `misses` of them outside the cache."""
        full = misses == 0
        self.seq_rounds += n
        self.seq_hits += n - misses
        self.step_rounds += 1
        self.cache_rounds += full
        self.fast_rounds += fast and not full
        c = self.rounds_by_size.setdefault(n, [0, 0])
        c[0] += 1
        c[1] += full

    # Per-request draws (not per_step_outcomes: a jit backup re-drafting the whole batch).
    def marks(self, rng: np.random.Generator, tok: np.ndarray) -> np.ndarray:
        """Which of a request's rounds miss the cache (1): each with its accepted count's
        probability, drawn right after its rounds (the law of sample(), per request)."""
        return (rng.random(tok.shape[0]) >= self.p_hit_k[tok - 1]).astype(np.int64)

    def outcome_at(self, tok: np.ndarray, marked: np.ndarray) -> SSDOutcome:
        n, misses = tok.shape[0], np.count_nonzero(marked)
        self._count(n, misses)
        return SSDOutcome(tok, tok - 1, n_redraft=n if misses else 0)

    def outcome_counted(self, n: int, marked: int) -> SSDOutcome:
        self._count(n, marked)
        return SSDOutcome(None, None, n_redraft=n if marked else 0)

    def prespeculation(self, b: StepBatch) -> tuple:
        """Glue forward (gamma+1 positions per decoding sequence, prompt chunks riding along),
        then gamma tree-decode steps over n_dec * sum(F_k) branches, on the draft's GPU."""
        d = self._draft_forward(self.gamma + 1, b.dec_ctx, b.dec_ctx_sum, b.pre_q, b.pre_ctx,
                                b.n_dec * (self.gamma + 1) + b.n_pre_done)
        rows = b.n_dec * self.branches
        if self._cheap_draft:  # the draft is priced from the branches' count and context sum
            if self._zeros.shape[0] < rows:  # (slices of it stand for contexts never read)
                self._zeros = np.zeros(2 * rows, np.int64)
            branch_sum = self.branches * b.dec_ctx_sum + b.n_dec * self._offset_sum
            return plus(d, self._draft_decode(self._zeros[:rows], self.gamma, rows, branch_sum))
        branch_ctx = np.repeat(b.dec_ctx, self.branches) + np.tile(self.branch_offset, b.n_dec)
        return plus(d, self._draft_decode(branch_ctx, self.gamma, rows))

    def step_time(self, b: StepBatch, out: SSDOutcome | None) -> float:
        if b.n_dec == 0:
            return self.prefill_only(b)
        t_v = self.target_time(b)
        pre = self.prespeculation(b)
        t_pre = float(sum(pre))
        t_h = self.handshake.time(b.n_dec)
        n_redraft = out.n_redraft
        if n_redraft == 0:
            charge(self.draft_busy, pre)
            return ssd_round(t_v, t_pre, t_h)
        # Whole batch re-drafted: the draft drops the tree when the verify result arrives, so
        # the backup starts at T_verify (Theorem 7's 1 + T_b) and the draft is busy min(T_pre, T_v).
        uses_tree = n_redraft < b.n_dec
        if not (uses_tree or t_pre <= t_v):
            s = t_v / t_pre
            pre = (pre[0] * s, pre[1] * s, pre[2] * s, pre[3] * s)
        charge(self.draft_busy, pre)
        t_b = 0.0
        if not out.fast:
            if n_redraft == b.n_dec:
                d = self._draft_decode(b.dec_ctx, self.gamma, n_redraft, b.dec_ctx_sum)
            else:
                d = self._draft_decode(b.dec_ctx[out.redraft], self.gamma, n_redraft)
            t_b = charge(self.draft_busy, d)
        return ssd_round(t_v, t_pre, t_h, t_b, uses_tree)

    def expected_hit_rate(self) -> float | None:
        return None if self.p_stop is None else hit_probability(self.p_stop, self.fanout, self.r)

    def summary(self, replicas: list[Strategy], duration: float) -> dict:
        sr = sum(s.seq_rounds for s in replicas)
        rounds = sum(s.step_rounds for s in replicas)
        return {
            "cache_hit_rate": sum(s.seq_hits for s in replicas) / sr if sr else None,
            "batch_hit_rate": sum(s.cache_rounds for s in replicas) / rounds if rounds else None,
            **super().summary(replicas, duration),
            "fast_backup_rounds": sum(s.fast_rounds for s in replicas),
            "ssd_fanout": [int(x) for x in self.fanout],
            "ssd_model_hit_rate": self.expected_hit_rate(),
        }


def make_ssd_strategy(dep, alpha: float | None) -> SSDStrategy:
    """SSDStrategy for one replica of a resolved deployment (fan-out from its ssd settings; the
    geometric policy and the expected hit rate use the mean alpha or the per-position rates)."""
    cfg = dep.ssd
    acc, g = dep.acceptance, dep.gamma
    p_stop = (stop_distribution_per_position(np.asarray(acc.per_position))
              if acc.per_position is not None else stop_distribution(acc.alpha, g))
    fo = cfg.fanout
    if fo.policy == "geometric":
        fanout = optimal_fanout(p_stop, cfg.r, fo.branches(g), fo.cap)
    else:
        fanout = uniform_fanout(fo.f, g)
    return SSDStrategy(dep.target_latency, dep.draft_latency, g, fanout, cfg.r, dep.handshake,
                       cfg.batch_policy, cfg.backup, cfg.backup_batch_threshold, alpha,
                       acc.per_position, p_stop)
