"""`gamma: auto`: choose a speculative deployment's lookahead. Pure functions, no SimPy; the
rounds priced through latency backends are simulator/deploy/gamma.py's.

Two methods, by latency backend:

- closed_form (ideal backend, SDSL's cost model): every forward pass of a model costs the same,
  so throughput is proportional to SDSL's T(gamma) and the optimum is the Lambert-W gamma*
  (simulator/physics/sdsl.py). The engine runs whole draft steps, so the chosen gamma is whichever of
  floor(gamma*) and ceil(gamma*) (at least 1) gives the larger T(gamma); T is unimodal in gamma,
  so that is the best integer. When the draft runs at a different peak FLOP/s than the target
  (another tp), the draft's parameter count is scaled by the peak ratio: only the time ratio
  c = t_draft / t_target enters gamma*.
- latency_search (roofline / profile backends): the whole gamma in 1..GAMMA_MAX that maximises
  predicted decode throughput of one replica at the deployment's operating point, from the
  backend's own `forward`: one round is gamma draft decode steps plus one target verify pass of
  gamma+1 tokens per sequence plus the engine's per-step overhead (exactly what the engine
  charges, see simulator/physics/rounds.py), and emits Leviathan's expected
  (1 - alpha^(gamma+1)) / (1 - alpha) tokens per sequence. No closed form: verification has a
  compute knee under a roofline.

Operating point (batch, context): context = mean prompt + half the mean output (the mean cache
length over a request's decode). Batch: closed loop, concurrency per replica (capped at
max_num_seqs); open loop, Little's law: the decode batch b satisfies b = lambda * W with
W = output_mean * t_round(b) / E[tokens], i.e. the smallest b whose predicted throughput (at its
best gamma) covers the offered lambda * output_mean tokens/s per replica; max_num_seqs when no
batch does (overload). Prefill work is left out of this estimate. Heterogeneous per-request
alpha is represented by its mean.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from simulator.physics import sdsl

GAMMA_MAX = 16  # upper end of the latency search (and the memory bound used before choosing)


@dataclass(frozen=True)
class OperatingPoint:
    batch: int  # sequences decoding together on one replica
    context: int  # tokens in each sequence's KV cache
    basis: str  # how the batch was obtained, for the report


@dataclass(frozen=True)
class GammaChoice:
    gamma: int
    method: str  # "closed_form" or "latency_search"
    reason: str  # one line for the report
    operating_batch: int | None = None
    context_tokens: int | None = None
    basis: str | None = None
    gamma_star: float | None = None  # closed form: real-valued Lambert-W optimum
    tokens_per_flop_star: float | None = None  # closed form: T*
    # (gamma, predicted figure) pairs: tokens per FLOP (closed form, floor/ceil candidates) or
    # tokens/s per replica (latency search, every gamma searched).
    curve: list[dict] = field(default_factory=list)
    ar_tokens_per_s: float | None = None  # latency search: AR at the same operating point

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- operating point

def decode_context(prompt_mean: float, output_mean: float) -> int:
    """Mean KV length over a request's decode: the prompt plus half the output."""
    return int(round(prompt_mean + output_mean / 2.0))


def closed_loop_point(concurrency: int, replicas: int, max_num_seqs: int, prompt_mean: float,
                      output_mean: float) -> OperatingPoint:
    per = math.ceil(concurrency / replicas)
    batch = max(1, min(per, max_num_seqs))
    basis = f"closed-loop concurrency {concurrency}"
    if replicas > 1:
        basis += f" over {replicas} replicas"
    if per > max_num_seqs:
        basis += f", capped at max_num_seqs {max_num_seqs}"
    return OperatingPoint(batch, decode_context(prompt_mean, output_mean), basis)


def littles_law_point(covers: Callable[[int], bool], rate_per_replica: float, prompt_mean: float,
                      output_mean: float, max_num_seqs: int) -> OperatingPoint:
    """Little's-law decode batch of one replica under an open-loop arrival rate (module docstring):
    the smallest batch b with covers(b) (predicted throughput at the best gamma >= the offered
    tokens/s). Throughput at the best gamma grows with the batch (each step's time is affine in
    the batch with a positive fixed part), so the batch is found by bisection."""
    context = decode_context(prompt_mean, output_mean)
    basis = (f"open loop, Little's law at {rate_per_replica:g} req/s per replica x "
             f"{output_mean:.0f} output tokens")
    if not covers(max_num_seqs):
        return OperatingPoint(max_num_seqs, context,
                              basis + f": overloaded, max_num_seqs {max_num_seqs}")
    lo, hi = 0, max_num_seqs  # covers(hi) holds, covers(lo) is taken as false
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if covers(mid) else (mid, hi)
    return OperatingPoint(hi, context, basis)


# ---------------------------------------------------------------- the choice

def choose_closed_form(alpha: float, draft_params: float, target_params: float,
                       peak_ratio: float = 1.0) -> GammaChoice:
    """Ideal backend: the better of floor/ceil of the Lambert-W gamma* under T(gamma).

    `peak_ratio` = target peak FLOP/s / draft peak FLOP/s (1 when both run on the same GPUs):
    the draft's effective parameter count is draft_params * peak_ratio.
    """
    n_eff = draft_params * peak_ratio
    if alpha >= 1.0:
        return _certain_acceptance(n_eff, target_params)
    g_star = sdsl.optimal_gamma(alpha, n_eff, target_params)
    t_star = sdsl.optimal_tokens_per_flop(alpha, n_eff, target_params)
    candidates = sorted({max(1, math.floor(g_star)), max(1, math.ceil(g_star))})
    curve = [{"gamma": k, "tokens_per_flop": sdsl.tokens_per_flop(alpha, k, n_eff, target_params)}
             for k in candidates]
    gamma = max(curve, key=lambda c: c["tokens_per_flop"])["gamma"]
    reason = (f"closed form (ideal backend): gamma* = {g_star:.3f} (Lambert W, alpha {alpha:.4f}, "
              f"N/M = {n_eff / target_params:.4g}); {gamma} is the better whole lookahead of "
              + " / ".join(f"T({c['gamma']}) = {c['tokens_per_flop'] / t_star:.5f} T*" for c in curve))
    return GammaChoice(gamma, "closed_form", reason, gamma_star=g_star, tokens_per_flop_star=t_star,
                       curve=curve)


def _certain_acceptance(n_eff: float, target_params: float) -> GammaChoice:
    """alpha = 1: every drafted token is accepted, T(gamma) = (gamma + 1) / (2 (gamma N + M)),
    monotone in gamma (rising when M > N): no interior optimum, so the end of the range."""
    gamma = GAMMA_MAX if target_params > n_eff else 1
    t = (gamma + 1) / (2.0 * (gamma * n_eff + target_params))
    reason = (f"closed form (ideal backend): alpha 1 accepts every drafted token, so T(gamma) = "
              f"(gamma + 1) / (2 (gamma N + M)) is monotone (N/M = {n_eff / target_params:.4g}) "
              f"and has no interior optimum; gamma {gamma}, the end of the range 1..{GAMMA_MAX}")
    return GammaChoice(gamma, "closed_form", reason, curve=[{"gamma": gamma, "tokens_per_flop": t}])


def best_of_curve(tput: np.ndarray, ar: float, point: OperatingPoint) -> GammaChoice:
    """Latency search: the gamma (1..len(tput)) of the highest predicted throughput `tput`
    (tokens/s per replica, element i is gamma i+1), with AR's `ar` at the same point."""
    gamma_max = len(tput)
    gamma = int(np.argmax(tput)) + 1
    near = [g for g in (gamma - 1, gamma + 1) if 1 <= g <= gamma_max]
    reason = (f"latency search over gamma 1..{gamma_max} at batch {point.batch}, context "
              f"{point.context} ({point.basis}): {tput[gamma - 1]:,.0f} tok/s predicted"
              + "".join(f", {tput[g - 1]:,.0f} at gamma {g}" for g in near)
              + f"; AR {ar:,.0f} tok/s")
    curve = [{"gamma": g, "tokens_per_s": float(t)} for g, t in enumerate(tput, 1)]
    return GammaChoice(gamma, "latency_search", reason, point.batch, point.context, point.basis,
                       curve=curve, ar_tokens_per_s=ar)
