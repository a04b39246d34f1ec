"""SSD pre-speculation (speculative speculative decoding, MODEL.md section 4) and SD with a
dedicated draft GPU: the pure functions (hit-rate model, fan-out policies, Theorem 7's batch-1
speedup, the handshake time) and the two strategies the engine runs.

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
which in steady state costs the same time per round).

Tree-decode steps are priced by the draft's latency backend with one query per branch and each
branch's own context (ctx + k + 1 + step): KV reads of the shared prefix are not deduplicated,
which is conservative at long context.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.latency.base import LatencyModel, charge, decode_steps, forward_batch
from simulator.engine.strategies.base import Outcome, SpeculativeStrategy, StepBatch, Strategy

# Default handshake (MODEL.md section 4: "a handshake with its own latency"): two messages per
# round (draft -> target: gamma token ids + their logits; target -> draft: k and the bonus token),
# each paying a fixed link latency (NCCL point-to-point small-message latency over NVLink/PCIe is
# ~10 us), plus the bytes over the one-way interconnect bandwidth at the efficiency the roofline
# uses for collectives. Override per deployment with `handshake_s`.
LINK_LATENCY_S = 10e-6
LINK_EFFICIENCY = 0.70
LOGIT_BYTES = 2  # bf16 logits
TOKEN_BYTES = 4  # int32 token ids


# ---- acceptance outcome distribution ---------------------------------------------------------
def stop_distribution(alpha: float, gamma: int) -> np.ndarray:
    """P(K=k), k = 0..gamma: alpha^k (1-alpha) for k < gamma, alpha^gamma at k = gamma."""
    k = np.arange(gamma + 1)
    p = alpha ** k * (1.0 - alpha)
    p[gamma] = alpha ** gamma
    return p


def stop_distribution_per_position(a: np.ndarray) -> np.ndarray:
    """P(K=k) when position i is accepted with probability a[i] given all before it."""
    reach = np.concatenate([[1.0], np.cumprod(a)])  # P(K >= k)
    return reach - np.concatenate([reach[1:], [0.0]])


# ---- hit-rate model ---------------------------------------------------------------------------
def hit_given_stop(fanout: np.ndarray, r: float) -> np.ndarray:
    """P(hit | K=k) = 1 - F_k^(-r) (power-law miss model)."""
    return 1.0 - np.asarray(fanout, float) ** (-r)


def hit_probability(p_stop: np.ndarray, fanout: np.ndarray, r: float) -> float:
    """Per-sequence P_hit = sum_k P(K=k) (1 - F_k^(-r))."""
    return float(np.dot(p_stop, hit_given_stop(fanout, r)))


def uniform_fanout(f: int, gamma: int) -> np.ndarray:
    """The reference default: F branches at every stopping point k = 0..gamma."""
    return np.full(gamma + 1, int(f), np.int64)


def _check_budget(gamma: int, budget: float, cap: float | None) -> None:
    if budget < gamma + 1:
        raise ValueError(f"fan-out budget {budget:g} is below gamma + 1 = {gamma + 1}: every "
                         "stopping point needs at least one branch")
    if cap is not None and cap * (gamma + 1) < budget:
        raise ValueError(f"fan-out cap {cap:g} x {gamma + 1} positions cannot hold budget {budget:g}")


def optimal_fanout_continuous(p_stop: np.ndarray, r: float, budget: float,
                              cap: float | None = None) -> np.ndarray:
    """Real-valued fan-out maximising P_hit under sum F_k = budget, F_k <= cap.

    Lagrange on sum_k P(k)(1 - F_k^(-r)): F_k proportional to P(k)^(1/(1+r)). With the truncated
    geometric P(k) this is Theorem 12: F_k = F0 alpha^(k/(1+r)) for k < gamma and
    F_gamma = F0 alpha^(gamma/(1+r)) (1-alpha)^(-1/(1+r)). Positions over the cap are pinned at
    it and the rest of the budget is shared in the same proportions (water-filling).
    """
    gamma = p_stop.shape[0] - 1
    _check_budget(gamma, budget, cap)
    w = np.asarray(p_stop, float) ** (1.0 / (1.0 + r))
    f = np.zeros_like(w)
    free = np.ones(w.shape[0], bool)
    left = float(budget)
    while True:
        f[free] = left * w[free] / w[free].sum()
        over = free & (f > cap) if cap is not None else np.zeros_like(free)
        if not over.any():
            return f
        f[over] = cap
        left -= cap * int(over.sum())
        free &= ~over


def geometric_fanout_continuous(alpha: float, gamma: int, r: float, budget: float,
                                cap: float | None = None) -> np.ndarray:
    """Theorem 12's fan-out for acceptance rate alpha (real-valued, capped, summing to budget)."""
    return optimal_fanout_continuous(stop_distribution(alpha, gamma), r, budget, cap)


def optimal_fanout(p_stop: np.ndarray, r: float, budget: int, cap: int | None = None) -> np.ndarray:
    """Integer fan-out (each F_k in 1..cap, sum = budget) with the largest P_hit.

    Starts from Theorem 12's real-valued optimum rounded by largest remainder, then moves single
    branches between positions while that raises P_hit. The objective is separable and concave
    in each F_k, so no improving single move means the integer optimum.
    """
    gamma = p_stop.shape[0] - 1
    cont = optimal_fanout_continuous(p_stop, r, budget, cap)
    hi = cap if cap is not None else budget
    f = np.clip(np.floor(cont), 1, hi).astype(np.int64)
    order = np.argsort(-(cont - np.floor(cont)), kind="stable")
    i = 0
    while f.sum() < budget:  # largest remainder first, skipping full positions
        j = order[i % (gamma + 1)]
        if f[j] < hi:
            f[j] += 1
        i += 1
    while f.sum() > budget:  # the floor at 1 can overshoot: take from the smallest remainders
        j = int(np.argmax(np.where(f > 1, f - cont, -np.inf)))
        f[j] -= 1

    def gain(x):  # P_hit added by one more branch at each position (-inf where full)
        g = p_stop * ((x.astype(float)) ** (-r) - (x + 1.0) ** (-r))
        return np.where(x < hi, g, -np.inf)

    def loss(x):  # P_hit lost by one branch fewer at each position (inf where at 1)
        with np.errstate(divide="ignore"):
            lo = p_stop * ((np.maximum(x - 1, 1).astype(float)) ** (-r) - x.astype(float) ** (-r))
        return np.where(x > 1, lo, np.inf)

    for _ in range(4 * budget):
        g, lo = gain(f), loss(f)
        add, take = int(np.argmax(g)), int(np.argmin(lo))
        if add == take or g[add] <= lo[take] * (1 + 1e-12):
            break
        f[add] += 1
        f[take] -= 1
    return f


def geometric_fanout(alpha: float, gamma: int, r: float, budget: int,
                     cap: int | None = None) -> np.ndarray:
    """The `geometric` policy: Theorem 12's allocation for alpha, in whole branches."""
    return optimal_fanout(stop_distribution(alpha, gamma), r, budget, cap)


# ---- closed forms -----------------------------------------------------------------------------
def batch1_terms(p_stop: np.ndarray, fanout: np.ndarray, r: float,
                 backup: str = "jit") -> tuple[float, float, float]:
    """(P_hit, E_hit, E_miss): tokens per round given a hit / a miss, in this module's reading."""
    h = hit_given_stop(fanout, r)
    tokens = np.arange(p_stop.shape[0]) + 1.0
    p = float(np.dot(p_stop, h))
    e_hit = float(np.dot(p_stop * h, tokens) / p) if p > 0 else 0.0
    if backup == "fast":
        e_miss = 1.0
    else:
        e_miss = float(np.dot(p_stop * (1 - h), tokens) / (1 - p)) if p < 1 else 0.0
    return p, e_hit, e_miss


def ssd_speedup_batch1(p_hit: float, e_hit: float, e_miss: float, t_p: float, t_b: float,
                       t_h: float = 0.0) -> float:
    """Theorem 7: SSD's speedup over autoregressive decoding at batch 1,

        [p E_hit + (1-p) E_miss] / [p max(1, T_p) + (1-p)(1 + T_b) + T_h],

    times normalised to one verify (= one autoregressive step): T_p = (T_glue + T_tree) / T_verify,
    T_b = T_backup / T_verify. T_h (handshake / T_verify) is 0 in the theorem.
    """
    num = p_hit * e_hit + (1 - p_hit) * e_miss
    return num / (p_hit * max(1.0, t_p) + (1 - p_hit) * (1.0 + t_b) + t_h)


# ---- handshake --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Handshake:
    """Per-round target <-> draft exchange: fixed_s + n_seqs * bytes_per_seq / bytes_per_s."""

    fixed_s: float
    bytes_per_seq: float = 0.0
    bytes_per_s: float = float("inf")

    def time(self, n_seqs: int) -> float:
        return self.fixed_s + n_seqs * self.bytes_per_seq / self.bytes_per_s

    @classmethod
    def from_link(cls, link_gbps: float, gamma: int, vocab: int) -> "Handshake":
        """Default: two messages of LINK_LATENCY_S each, and per sequence gamma token ids with
        their full-vocabulary bf16 logits (draft -> target) plus k and the bonus token back,
        over LINK_EFFICIENCY of the one-way bandwidth (link_gbps is the datasheet bidirectional
        GB/s)."""
        per_seq = gamma * (TOKEN_BYTES + vocab * LOGIT_BYTES) + 2 * TOKEN_BYTES
        return cls(2 * LINK_LATENCY_S, per_seq, link_gbps * 1e9 / 2 * LINK_EFFICIENCY)


# ---- strategies -------------------------------------------------------------------------------
def _draft_prefill(draft: LatencyModel, b: StepBatch):
    """The dedicated draft's forward over this step's prompt chunks (prefill-only steps)."""
    return forward_batch(draft, 1, b.dec_ctx, b.dec_ctx_sum, b.pre_q, b.pre_ctx, b.n_pre_done)


class DedicatedDraftSD(SpeculativeStrategy):
    """Standard SD with the draft on its own GPU(s) (`draft_placement: dedicated`): no
    pre-speculation, so per round draft (gamma steps) + handshake + verify, in sequence. Steps
    with only prompt chunks run them on both GPUs at once."""

    name = "sd"

    def __init__(self, target: LatencyModel, draft: LatencyModel, gamma: int,
                 handshake: Handshake, alpha: float | None = None,
                 per_position: list[float] | None = None):
        super().__init__(target, draft, gamma, alpha, per_position)
        self.handshake = handshake

    def prefill_only(self, b: StepBatch) -> float:
        """A step with only prompt chunks: both GPUs prefill them at once."""
        return max(self.target_time(b), charge(self.draft_busy, _draft_prefill(self.draft, b)))

    def step_time(self, b: StepBatch, out: Outcome) -> float:
        if b.n_dec == 0:
            return self.prefill_only(b)
        return self.draft_time(b) + self.target_time(b) + self.handshake.time(b.n_dec)

    def summary(self, replicas: list[Strategy], duration: float) -> dict:
        busy = sum(sum(s.draft_busy) for s in replicas)
        return {"draft_gpu_busy_fraction": busy / (len(replicas) * duration) if duration > 0 else 0.0}


@dataclass
class SSDOutcome(Outcome):
    hit: np.ndarray | None = None  # per decoding sequence: its outcome was in the cache
    redraft: np.ndarray | None = None  # sequences the backup re-drafts
    fast: bool = False  # the backup is random tokens (no draft time)


class SSDStrategy(DedicatedDraftSD):
    """SSD pre-speculation (see the module docstring for the round-time model). Accepted counts
    are sampled as in standard SD (`alpha` shared, or the per-request alphas, or per-position)."""

    name = "ssd"

    def __init__(self, target: LatencyModel, draft: LatencyModel, gamma: int, fanout: np.ndarray,
                 r: float, handshake: Handshake, batch_policy: str = "all_or_nothing",
                 backup: str = "jit", backup_batch_threshold: int | None = None,
                 alpha: float | None = None, per_position: list[float] | None = None,
                 p_stop: np.ndarray | None = None):
        super().__init__(target, draft, gamma, handshake, alpha, per_position)
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
        self.seq_rounds = 0
        self.seq_hits = 0
        self.rounds = 0
        self.cache_rounds = 0  # rounds in which no sequence needed a backup
        self.fast_rounds = 0
        # Per batch size n (decoding sequences): rounds, and rounds that used the cache.
        self.rounds_by_size: dict[int, list[int]] = {}

    def sample(self, rng: np.random.Generator, alpha: np.ndarray) -> SSDOutcome:
        n = alpha.shape[0]
        k = super().sample(rng, alpha).accepted
        hit = rng.random(n) < self.p_hit_k[k]
        full = bool(hit.all())
        redraft = np.zeros(n, bool) if full else (np.ones(n, bool) if self.all_or_nothing else ~hit)
        fast = self.backup == "fast" or (self.threshold is not None and n > self.threshold)
        tokens, accepted = k + 1, k
        if fast and not full:
            tokens, accepted = np.where(redraft, 1, tokens), np.where(redraft, 0, accepted)
        self.seq_rounds += n
        self.seq_hits += int(hit.sum())
        self.rounds += 1
        self.cache_rounds += full
        self.fast_rounds += fast and not full
        c = self.rounds_by_size.setdefault(n, [0, 0])
        c[0] += 1
        c[1] += full
        return SSDOutcome(tokens, accepted, hit, redraft, fast)

    def prespeculation(self, b: StepBatch) -> np.ndarray:
        """Glue forward (gamma+1 positions per decoding sequence, prompt chunks riding along),
        then gamma tree-decode steps over n_dec * sum(F_k) branches, on the draft's GPU."""
        d = np.asarray(forward_batch(self.draft, self.gamma + 1, b.dec_ctx, b.dec_ctx_sum, b.pre_q,
                                     b.pre_ctx, b.n_dec * (self.gamma + 1) + b.n_pre_done))
        branch_ctx = np.repeat(b.dec_ctx, self.branches) + np.tile(self.branch_offset, b.n_dec)
        return d + decode_steps(self.draft, branch_ctx, self.gamma, branch_ctx.shape[0])

    def step_time(self, b: StepBatch, out: SSDOutcome | None) -> float:
        if b.n_dec == 0:
            return self.prefill_only(b)
        t_v = self.target_time(b)
        pre = self.prespeculation(b)
        t_pre = float(sum(pre))
        t_h = self.handshake.time(b.n_dec)
        n_redraft = int(out.redraft.sum())
        if n_redraft == 0:
            charge(self.draft_busy, pre)
            return max(t_v, t_pre) + t_h
        # Whole batch re-drafted: the draft drops the tree when the verify result arrives, so
        # the backup starts at T_verify (Theorem 7's 1 + T_b) and the draft is busy min(T_pre, T_v).
        uses_tree = n_redraft < b.n_dec
        charge(self.draft_busy, pre if uses_tree or t_pre <= t_v else np.asarray(pre) * (t_v / t_pre))
        t_b = 0.0
        if not out.fast:
            ctx = b.dec_ctx if n_redraft == b.n_dec else b.dec_ctx[out.redraft]
            t_b = charge(self.draft_busy, decode_steps(self.draft, ctx, self.gamma, n_redraft))
        return (max(t_v, t_pre) if uses_tree else t_v) + t_b + t_h

    def expected_hit_rate(self) -> float | None:
        return None if self.p_stop is None else hit_probability(self.p_stop, self.fanout, self.r)

    def summary(self, replicas: list[Strategy], duration: float) -> dict:
        sr = sum(s.seq_rounds for s in replicas)
        rounds = sum(s.rounds for s in replicas)
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
