"""`gamma: auto` for a resolved deployment: the rounds of its backends priced at an operating
point, and the choice (simulator/physics/lookahead.py holds the method and its reasoning).

A round here is what the engine charges: gamma draft decode steps plus one target verify of
gamma+1 tokens per sequence plus the engine's per-step overhead (simulator/physics/rounds.py).
"""
from __future__ import annotations

import numpy as np

from simulator.config.workload_schema import Workload
from simulator.config.workload import Requests
from simulator.deploy.deployments import ResolvedDeployment
from simulator.latency.base import LatencyModel, decode_steps, forward_batch, step_overhead
from simulator.latency.ideal import IdealLatency
from simulator.physics.acceptance import expected_tokens_per_round
from simulator.physics.lookahead import (GAMMA_MAX, GammaChoice, OperatingPoint, best_of_curve,
                                         choose_closed_form, closed_loop_point, decode_context,
                                         littles_law_point)
from simulator.physics.rounds import ar_round, sd_round


def ar_step_time(target: LatencyModel, batch: int, context: int) -> float:
    """One AR decode step of `batch` sequences, priced as the engine prices it (forward plus
    the step's engine overhead)."""
    ctx = np.full(batch, context, np.int64)
    t = float(sum(forward_batch(target, 1, ctx, batch * context, [], [], batch)))
    return ar_round(t, step_overhead(target, batch, batch, batch, 0, 0, t))


def sd_round_time(target: LatencyModel, draft: LatencyModel, gamma: int, batch: int,
                  context: int) -> float:
    """gamma draft decode steps + one target verify of gamma+1 tokens per sequence + the step's
    engine overhead, priced as the engine prices them."""
    ctx = np.full(batch, context, np.int64)
    t_draft = float(sum(decode_steps(draft, ctx, gamma, batch)))
    q = gamma + 1
    t_verify = float(sum(forward_batch(target, q, ctx, batch * context, [], [], batch * q)))
    over = step_overhead(target, batch, batch * q, batch * q, batch, gamma, t_draft + t_verify)
    return sd_round(t_draft, t_verify, over)


def ar_throughput(target: LatencyModel, batch: int, context: int) -> float:
    return batch / ar_step_time(target, batch, context)


def sd_throughput(target: LatencyModel, draft: LatencyModel, alpha: float, gamma: int, batch: int,
                  context: int) -> float:
    """Predicted decode tokens/s of one replica: batch * E[tokens per round] / round time."""
    return (batch * expected_tokens_per_round(alpha, gamma)
            / sd_round_time(target, draft, gamma, batch, context))


def throughput_curve(target: LatencyModel, draft: LatencyModel, alpha: float, batch: int,
                     context: int, gamma_max: int = GAMMA_MAX) -> np.ndarray:
    """sd_throughput for gamma = 1..gamma_max (element i is gamma i+1)."""
    return np.array([sd_throughput(target, draft, alpha, g, batch, context)
                     for g in range(1, gamma_max + 1)])


def open_loop_point(target: LatencyModel, draft: LatencyModel, alpha: float,
                    rate_per_replica: float, prompt_mean: float, output_mean: float,
                    max_num_seqs: int, gamma_max: int = GAMMA_MAX) -> OperatingPoint:
    """Little's-law decode batch of one replica under an open-loop arrival rate."""
    context = decode_context(prompt_mean, output_mean)
    offered = rate_per_replica * output_mean

    def covers(b: int) -> bool:
        return throughput_curve(target, draft, alpha, b, context, gamma_max).max() >= offered

    return littles_law_point(covers, rate_per_replica, prompt_mean, output_mean, max_num_seqs)


def choose_by_latency(target: LatencyModel, draft: LatencyModel, alpha: float,
                      point: OperatingPoint, gamma_max: int = GAMMA_MAX) -> GammaChoice:
    """Roofline / profile backends: argmax of predicted throughput over gamma = 1..gamma_max."""
    if gamma_max < 1:
        raise ValueError(f"gamma_max must be >= 1, got {gamma_max}")
    tput = throughput_curve(target, draft, alpha, point.batch, point.context, gamma_max)
    return best_of_curve(tput, ar_throughput(target, point.batch, point.context), point)


def choose_gamma(dep: ResolvedDeployment, workload: Workload, req: Requests) -> GammaChoice:
    """`gamma: auto` for one (resolved) deployment under one workload (simulator/py)."""
    alpha = dep.acceptance.alpha
    if isinstance(dep.target_latency, IdealLatency):
        ratio = dep.target_latency.peak_flops / dep.draft_latency.peak_flops
        return choose_closed_form(alpha, dep.draft.params, dep.target.params, ratio)
    prompt_mean, output_mean = float(req.prompt.mean()), float(req.output.mean())
    max_seqs = min(dep.scheduler.max_num_seqs, req.n)
    if req.concurrency is not None:
        point = closed_loop_point(min(req.concurrency, req.n), dep.replicas, max_seqs,
                                             prompt_mean, output_mean)
    else:
        rate = getattr(workload.arrival, "rate_per_s", None)
        if rate is None:  # trace replay: its mean arrival rate
            span = float(req.arrival.max() - req.arrival.min())
            rate = (req.n - 1) / span if span > 0 else float("inf")
        point = open_loop_point(dep.target_latency, dep.draft_latency, alpha,
                                           rate / dep.replicas, prompt_mean, output_mean, max_seqs)
    return choose_by_latency(dep.target_latency, dep.draft_latency, alpha, point)
