"""`specsim plan`'s search space: the designs a plan file expands to, the analytic bounds, the
pruning (with reasons), and the SLO verdict. The method is described in simulator/run/plan.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from simulator.config.plan import PlanFile
from simulator.config.schema import Deployment
from simulator.config.workload import generate
from simulator.deploy.deployments import ResolvedDeployment, resolve
from simulator.deploy.fit import check_fits
from simulator.deploy.gamma import ar_step_time, sd_round_time
from simulator.errors import SpecsimError
from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS
from simulator.physics.acceptance import expected_tokens_per_position, expected_tokens_per_round
from simulator.physics.lookahead import GAMMA_MAX, decode_context

# TPOT prune: a design is dropped when its mean TPOT at batch 1 (no queueing, no batching) is
# above PRUNE_MARGIN x the TPOT bound. The margin covers per-request spread around that mean
# (speculative rounds accept a random number of tokens); a judgement, not a fit.
PRUNE_MARGIN = 1.25
# SLO field -> (summary metric, percentile)
PERCENTILES = {"ttft_p99_s": ("ttft_s", "p99"), "tpot_p99_s": ("tpot_s", "p99"),
               "ttft_p90_s": ("ttft_s", "p90"), "tpot_p90_s": ("tpot_s", "p90"),
               "e2e_p99_s": ("e2e_s", "p99")}


@dataclass
class Design:
    name: str
    gpu: str
    tp: int
    strategy: str
    draft: str | None
    gamma: int | str | None
    deployment: dict  # scenario deployment, replicas 1
    resolved: ResolvedDeployment
    bound_rate_per_s: float = 0.0
    capacity_rate_per_s: float = 0.0
    probes: list = field(default_factory=list)  # (rate, verdict)
    fleets: dict = field(default_factory=dict)  # replicas -> summary row

    @property
    def gpus_per_replica(self) -> int:
        return self.resolved.tp + self.resolved.draft_gpus


def fleet_verdict(plan: PlanFile, d: "Design", n: int, row: dict) -> dict:
    """The SLO verdict of `n` replicas of `d` at the load; a fleet cannot keep up in steady state,
    whatever a finite run's percentiles say, when its load per replica is above the capacity
    bound or the run's queue was flagged overloaded (simulator/analysis/steady_state.py)."""
    v = verdict(row, plan.slo.bounds())
    v["overloaded"] = plan.load / n > d.bound_rate_per_s or bool(row.get("overloaded"))
    v["meets_slo"] = v["meets_slo"] and not v["overloaded"]
    return v


def verdict(row: dict, bounds: dict[str, float]) -> dict:
    """MLPerf-style: each bounded percentile over its bound; met when all are <= 1."""
    measured, ratio = {}, {}
    for key, bound in bounds.items():
        metric, pct = PERCENTILES[key]
        v = row[metric][pct]
        measured[key] = v
        ratio[key] = None if v is None else v / bound
    known = [r for r in ratio.values() if r is not None]
    worst = max(known) if known else 0.0
    return {"meets_slo": worst <= 1.0, "measured": measured, "slo_ratio": ratio,
            "worst_slo_ratio": worst,
            "worst_metric": max((k for k in ratio if ratio[k] is not None), key=lambda k: ratio[k],
                                default=None)}


# ---------------------------------------------------------------- candidates

def _deployment_dict(plan: PlanFile, gpu: str, tp: int, st, draft, gamma) -> dict:
    s = plan.search
    d = {"name": "", "target": s.target, "gpu": gpu, "tp": tp, "replicas": 1,
         "router": "least_outstanding", "strategy": st.strategy}
    if draft is not None:
        d["draft"] = draft
    if gamma is not None:
        d["gamma"] = gamma
    for key in ("acceptance", "draft_placement", "draft_gpus", "draft_gpu", "draft_tp",
                "handshake_s", "ssd", "draft_latency"):
        v = getattr(st, key)
        v = v.model_dump(exclude_defaults=True) if hasattr(v, "model_dump") else v
        if v is not None and v != {} or (key == "ssd" and v == {}):
            d[key] = v
    for key in ("latency", "scheduler", "engine"):
        v = getattr(s, key).model_dump(exclude_defaults=True)
        if v:
            d[key] = v
    d["dtype"] = s.dtype
    d["gpu_memory_utilization"] = s.gpu_memory_utilization
    if gpu in s.price_per_gpu_hour:
        d["price_per_gpu_hour"] = s.price_per_gpu_hour[gpu]
    return d


def _name(d: dict) -> str:
    parts = [d["gpu"], f"tp{d['tp']}", d["strategy"]]
    if "draft" in d:
        parts.append(d["draft"])
    if "gamma" in d:
        parts.append(f"g{d['gamma']}")
    if d["strategy"] == "sd" and d.get("draft_placement") == "dedicated":
        parts.append("dedicated")
    return "-".join(parts)


def _check_names(plan: PlanFile, source: str) -> None:
    s = plan.search
    if s.target not in MODELS:
        raise SpecsimError(f"{source}: search.target: unknown model '{s.target}'; known: {', '.join(MODELS)}")
    for j, g in enumerate(s.gpus):
        if g not in GPUS:
            raise SpecsimError(f"{source}: search.gpus[{j}]: unknown gpu '{g}'; known: {', '.join(GPUS)}")
    for i, st in enumerate(s.strategies):
        for dr in st.draft or []:
            if dr not in MODELS:
                raise SpecsimError(f"{source}: search.strategies[{i}].draft: unknown model '{dr}'; "
                                   f"known: {', '.join(MODELS)}")


def enumerate_designs(plan: PlanFile, source: str) -> list[tuple[int, dict]]:
    """(strategy index, deployment dict) for every combination, validated as deployments."""
    _check_names(plan, source)
    out = []
    for gpu in plan.search.gpus:
        for tp in plan.search.tp:
            for i, st in enumerate(plan.search.strategies):
                for draft in st.drafts():
                    for gamma in st.gammas():
                        d = _deployment_dict(plan, gpu, tp, st, draft, gamma)
                        d["name"] = _name(d)
                        try:
                            Deployment.model_validate(d)
                        except ValidationError as e:
                            msg = e.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
                            raise SpecsimError(f"{source}: invalid plan\n  search.strategies[{i}]: "
                                               f"{msg} (candidate {d['name']})") from None
                        out.append((i, d))
    names = [d["name"] for _, d in out]
    for i, d in out:  # two strategy entries can give the same name (e.g. other ssd settings)
        if names.count(d["name"]) > 1:
            d["name"] += f"-s{i}"
    return out


# ---------------------------------------------------------------- analytic bounds

def _tokens_per_round(dep: ResolvedDeployment, gamma: int) -> float:
    acc = dep.acceptance
    if acc.per_position is not None:
        return expected_tokens_per_position(np.asarray(acc.per_position[:gamma]))
    return expected_tokens_per_round(acc.alpha, gamma)


def _round(dep: ResolvedDeployment, auto: bool, batch: int, ctx: int) -> tuple[float, float]:
    """(seconds per round, expected tokens per sequence per round) at `batch` and context `ctx`;
    gamma: auto takes the best lookahead in 1..GAMMA_MAX."""
    t, dl = dep.target_latency, dep.draft_latency
    if dep.strategy == "ar":
        return ar_step_time(t, batch, ctx), 1.0
    gammas = range(1, GAMMA_MAX + 1) if auto else [dep.gamma]
    best = None
    for g in gammas:
        if dep.strategy == "ssd":  # drafting overlaps verification: the verify pass alone
            q, c = np.full(batch, g + 1, np.int64), np.full(batch, ctx, np.int64)
            sec = float(t.forward(q, c, batch * (g + 1)).sum()) + t.step_overhead_s
        else:
            sec = sd_round_time(t, dl, g, batch, ctx)
        tok = _tokens_per_round(dep, g)
        if best is None or tok / sec > best[1] / best[0]:
            best = (sec, tok)
    return best


def capacity_bound(dep: ResolvedDeployment, auto: bool, prompt_mean: float,
                   output_mean: float) -> tuple[float, float]:
    """(requests/s one replica cannot exceed, mean TPOT at batch 1), from the latency backend."""
    ctx = decode_context(prompt_mean, output_mean)
    batch = max(1, min(dep.scheduler.max_num_seqs, dep.memory.kv_capacity_tokens // max(ctx, 1)))
    sec, tok = _round(dep, auto, batch, ctx)
    sec1, tok1 = _round(dep, auto, 1, ctx)
    return batch * tok / sec / output_mean, sec1 / tok1


def max_replicas(plan: PlanFile, gpus_per_replica: int) -> int | None:
    """The most replicas the budget (and a replicas list) allows; None when unbounded."""
    caps = []
    if plan.budget.max_gpus is not None:
        caps.append(plan.budget.max_gpus // gpus_per_replica)
    if isinstance(plan.search.replicas, list):
        caps.append(max(plan.search.replicas))
    return min(caps) if caps else None


def prune(plan: PlanFile, base: Path, source: str) -> tuple[list[Design], list[dict], int]:
    """Designs worth simulating, the rejected ones with their reasons, and the count enumerated."""
    req = generate(plan.workload, plan.seed, base)
    prompt_mean, output_mean = float(req.prompt.mean()), float(req.output.mean())
    bounds = plan.slo.bounds()
    tpot_bound = min((bounds[k] for k in ("tpot_p99_s", "tpot_p90_s") if k in bounds), default=None)
    kept, rejected = [], []
    enumerated = enumerate_designs(plan, source)
    for _, d in enumerated:
        why, stage = None, "memory"
        try:
            dep = resolve(Deployment.model_validate(d), 0, base)
            check_fits(dep, req, "deployment")
        except SpecsimError as e:
            why = str(e).replace("deployments[0]", d["name"], 1)
            stage = "memory" if "does not fit" in why or "KV slots" in why else "deployment"
        if why is None:
            stage = "bound"
            auto = d.get("gamma") == "auto"
            rate, tpot1 = capacity_bound(dep, auto, prompt_mean, output_mean)
            top = max_replicas(plan, dep.tp + dep.draft_gpus)
            if top == 0:
                why = (f"one replica needs {dep.tp + dep.draft_gpus} GPUs; the budget allows "
                       f"{plan.budget.max_gpus}")
            elif tpot_bound is not None and tpot1 > PRUNE_MARGIN * tpot_bound:
                why = (f"mean TPOT at batch 1 is {tpot1 * 1e3:.1f} ms by the latency model, above "
                       f"the SLO's {tpot_bound * 1e3:.1f} ms even without queueing")
            elif top is not None and rate * top < plan.load:
                why = (f"capacity bound {rate:.3g} req/s per replica x {top} replicas (the most "
                       f"the budget allows) is below the load of {plan.load:g} req/s")
        if why is not None:
            rejected.append({"name": d["name"], "stage": stage, "reason": why})
            continue
        kept.append(Design(d["name"], d["gpu"], d["tp"], d["strategy"], d.get("draft"),
                           d.get("gamma"), d, dep, bound_rate_per_s=rate))
    return kept, rejected, len(enumerated)
