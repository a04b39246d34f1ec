"""SSD pre-speculation's laws (speculative speculative decoding, MODEL.md section 4): the
acceptance outcome distribution, the power-law hit-rate model, the fan-out policies and
Theorem 7's batch-1 speedup. Pure functions; the strategy that runs them is
simulator/engine/strategies/ssd.py.

Source: Kumar, Dao, May, "Speculative Speculative Decoding" (ICLR 2026, arXiv 2603.03251).
While the target verifies round i, the draft guesses the outcome (k accepted, bonus token): for
every stopping point k = 0..gamma it keeps F_k bonus candidates and drafts gamma tokens ahead for
each branch. Miss model: P(miss | F) = F^(-r), so given the round's accepted count K the next
round's draft is ready with probability 1 - F_K^(-r).
"""
from __future__ import annotations

import numpy as np


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
        tot = w[free].sum()
        # alpha = 1 puts all weight on k = gamma: once that position is capped the free ones
        # weigh nothing, and the rest of the budget is spread evenly (any split is optimal).
        f[free] = left * w[free] / tot if tot > 0 else left / max(int(free.sum()), 1)
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
