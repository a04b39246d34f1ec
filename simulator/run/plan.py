"""`specsim plan`: find the cheapest fleet that meets an SLO at a load.

Method (each step's numbers come from the simulator itself, never from a fitted shortcut):
1. Enumerate designs: gpu x tp x strategy x draft x gamma, each a scenario deployment.
2. Prune what cannot work, with the reason: the deployment resolver refuses it (it does not fit
   in memory, tp does not divide the heads, ...); a request does not fit its KV cache; its mean
   TPOT at batch 1 is above PRUNE_MARGIN x the SLO's; or an analytic capacity bound times the
   most replicas the budget allows is below the load. The bound is one replica's decode
   throughput at its largest batch (min(max_num_seqs, KV tokens / mean context)) divided by the
   mean output length, from the latency backend's own step times (gamma_auto's ar_step_time /
   sd_round_time at the expected tokens per round; SSD: the verify pass alone, its drafting
   overlaps); it leaves out prefill, handshakes and queueing, so no replica sustains more.
3. Capacity per replica under the SLO: bisection on the Poisson rate in (0, bound]
   with `bisection_steps` single-replica simulations per design (the workload's request count, or
   `search.requests_per_simulation`; a P99 rests on the slowest 1% of them, so use >= 1000 for a
   purchase decision). The capacity is the largest rate probed whose percentiles met the SLO.
4. Replicas: ceil(load / capacity) (or each count in `search.replicas`), then the whole fleet is
   simulated at the load with the least_outstanding router. A fleet that fails gets one more
   replica, one that passes is tried with one fewer (pooled replicas carry more than one replica
   alone), at most `max_extra_replicas` steps each way: the answer is the fewest replicas tried
   that pass.
5. Verdict per fleet, MLPerf-style: each SLO percentile measured over all the fleet's requests
   divided by its bound; the fleet meets the SLO when every ratio is <= 1 and its load per
   replica is within the capacity bound (a finite run can queue a short overload and still pass
   its percentiles; in steady state it would not). Fleets meeting it are ranked by the objective.
Every simulation uses the plan's seed (common random numbers: designs are compared on the same
requests and arrival draws), and the steps of every design advance together, so each round is a
batch of independent tasks for the executor (simulator/run/executors.py).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import ValidationError

from simulator import gamma_auto
from simulator.acceptance import expected_tokens_per_position, expected_tokens_per_round
from simulator.catalog import GPUS, MODELS
from simulator.config.plan import PlanFile
from simulator.deployments import ResolvedDeployment, resolve
from simulator.errors import SpecsimError
from simulator.run.executors import Task, TaskCache, run_tasks
from simulator.runner import check_fits
from simulator.scenario import Deployment
from simulator.workload import generate

# TPOT prune: a design is dropped when its mean TPOT at batch 1 (no queueing, no batching) is
# above PRUNE_MARGIN x the TPOT bound. The margin covers per-request spread around that mean
# (speculative rounds accept a random number of tokens); a judgement, not a fit.
PRUNE_MARGIN = 1.25
# SLO field -> (summary metric, percentile)
PERCENTILES = {"ttft_p99_s": ("ttft_s", "p99"), "tpot_p99_s": ("tpot_s", "p99"),
               "ttft_p90_s": ("ttft_s", "p90"), "tpot_p90_s": ("tpot_s", "p90"),
               "e2e_p99_s": ("e2e_s", "p99")}
Progress = Callable[[str, int, int], None]  # (what is running, tasks done, tasks expected)


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
    """The SLO verdict of `n` replicas of `d` at the load; a fleet whose load per replica is above
    the capacity bound cannot keep up in steady state, whatever a finite run's percentiles say."""
    v = verdict(row, plan.slo.bounds())
    v["overloaded"] = plan.load / n > d.bound_rate_per_s
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
    for key in ("latency", "scheduler"):
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
        return gamma_auto.ar_step_time(t, batch, ctx), 1.0
    gammas = range(1, gamma_auto.GAMMA_MAX + 1) if auto else [dep.gamma]
    best = None
    for g in gammas:
        if dep.strategy == "ssd":  # drafting overlaps verification: the verify pass alone
            q, c = np.full(batch, g + 1, np.int64), np.full(batch, ctx, np.int64)
            sec = float(t.forward(q, c, batch * (g + 1)).sum()) + t.step_overhead_s
        else:
            sec = gamma_auto.sd_round_time(t, dl, g, batch, ctx)
        tok = _tokens_per_round(dep, g)
        if best is None or tok / sec > best[1] / best[0]:
            best = (sec, tok)
    return best


def capacity_bound(dep: ResolvedDeployment, auto: bool, prompt_mean: float,
                   output_mean: float) -> tuple[float, float]:
    """(requests/s one replica cannot exceed, mean TPOT at batch 1), from the latency backend."""
    ctx = gamma_auto.decode_context(prompt_mean, output_mean)
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


# ---------------------------------------------------------------- simulation tasks

def _workload(plan: PlanFile, rate: float | None = None) -> dict:
    """The plan's workload; with `rate`, one replica's probe at that rate (and a request count)."""
    w = plan.workload.model_dump(exclude_none=True)
    if rate is None:
        return w
    n = plan.search.requests_per_simulation or plan.workload.requests
    if n is None:
        n = max(1, round(plan.load * plan.workload.duration_s))
    w.pop("duration_s", None)
    w["requests"] = n
    w["arrival"] = {**w["arrival"], "rate_per_s": rate}
    return w


def scenario_dict(plan: PlanFile, name: str, deployments: list[dict], rate: float | None = None) -> dict:
    """A runnable scenario: the plan's workload (at the load, or a probe rate) and deployments."""
    sc = {"name": name, "seed": plan.seed, "workload": _workload(plan, rate)}
    b = plan.slo.bounds()
    slo = {k: b[f"{k[:-2]}_p99_s"] for k in ("ttft_s", "tpot_s") if f"{k[:-2]}_p99_s" in b}
    if slo:
        sc["slo"] = slo  # goodput in the summary; the verdict uses the plan's percentiles
    sc["deployments"] = deployments
    return sc


def fleet_deployment(d: Design, replicas: int) -> dict:
    return {**d.deployment, "name": f"{d.name}-x{replicas}", "replicas": replicas}


def probe_task(plan: PlanFile, d: Design, rate: float, base: Path) -> Task:
    return Task(scenario_dict(plan, plan.name, [d.deployment], rate), plan.seed, str(base))


def fleet_task(plan: PlanFile, d: Design, replicas: int, base: Path) -> Task:
    return Task(scenario_dict(plan, plan.name, [fleet_deployment(d, replicas)]), plan.seed, str(base))


# ---------------------------------------------------------------- the search

class Rounds:
    """Runs one round of tasks through the cache and executor; counts and reports progress."""

    def __init__(self, executor, cache: TaskCache, progress: Progress | None, expected: int):
        self.executor, self.cache, self.progress = executor, cache, progress
        self.expected, self.done, self.tasks = expected, 0, 0

    def __call__(self, label: str, tasks: list[Task]) -> list[dict]:
        self.expected = max(self.expected, self.done + len(tasks))

        def advance(n: int) -> None:
            self.done += n
            if self.progress:
                self.progress(label, self.done, self.expected)
        if self.progress:
            self.progress(label, self.done, self.expected)
        results = run_tasks(self.executor, tasks, self.cache, advance)
        self.tasks += len(tasks)
        return [r["deployments"][0] for r in results]


def capacity_search(plan: PlanFile, designs: list[Design], base: Path, run: Rounds) -> None:
    """Per design, the largest probed Poisson rate at which one replica meets the SLO."""
    steps, bounds = plan.search.bisection_steps, plan.slo.bounds()
    lo = {d.name: 0.0 for d in designs}
    hi = {d.name: d.bound_rate_per_s for d in designs}
    for k in range(steps):
        mids = [(lo[d.name] + hi[d.name]) / 2 for d in designs]
        rows = run(f"capacity per replica: bisection step {k + 1} of {steps}",
                   [probe_task(plan, d, m, base) for d, m in zip(designs, mids)])
        for d, m, row in zip(designs, mids, rows):
            v = verdict(row, bounds)
            d.probes.append({"rate_per_s": m, "meets_slo": v["meets_slo"],
                             "worst_slo_ratio": v["worst_slo_ratio"], "worst_metric": v["worst_metric"]})
            if v["meets_slo"]:
                lo[d.name] = m
            else:
                hi[d.name] = m
    for d in designs:
        d.capacity_rate_per_s = lo[d.name]


def _next_count(d: Design, n: int, met: bool, top: int | None, moves: dict, limit: int) -> int | None:
    """The next replica count to try after `n` (None: done); see the module docstring, step 4."""
    step = -1 if met else 1
    nxt = n + step
    if nxt < 1 or (top is not None and nxt > top) or nxt in d.fleets or moves[step] >= limit:
        return None
    moves[step] += 1
    return nxt


def confirm_fleets(plan: PlanFile, designs: list[Design], base: Path, run: Rounds) -> None:
    """Simulate whole fleets at the load: the replica counts to try, per the module docstring."""
    limit = plan.search.max_extra_replicas
    if isinstance(plan.search.replicas, list):
        todo = [(d, n) for d in designs for n in plan.search.replicas
                if n <= (max_replicas(plan, d.gpus_per_replica) or n)]
        rows = run("whole fleets at the load", [fleet_task(plan, d, n, base) for d, n in todo])
        for (d, n), row in zip(todo, rows):
            d.fleets[n] = row
        return
    current, moves = {}, {}
    for d in designs:
        top = max_replicas(plan, d.gpus_per_replica)
        n = math.ceil(plan.load / d.capacity_rate_per_s)
        current[d.name] = n if top is None else min(n, top)
        moves[d.name] = {-1: 0, 1: 0}
    k = 0
    while current:
        k += 1
        active = [d for d in designs if d.name in current]
        rows = run(f"whole fleets at the load: round {k}",
                   [fleet_task(plan, d, current[d.name], base) for d in active])
        for d, row in zip(active, rows):
            n = current.pop(d.name)
            d.fleets[n] = row
            met = fleet_verdict(plan, d, n, row)["meets_slo"]
            nxt = _next_count(d, n, met, max_replicas(plan, d.gpus_per_replica), moves[d.name], limit)
            if nxt is not None:
                current[d.name] = nxt


# ---------------------------------------------------------------- ranking and outputs

def fleet_row(plan: PlanFile, d: Design, n: int, row: dict) -> dict:
    """One ranked entry: the design, its fleet's figures and its SLO verdict."""
    v = fleet_verdict(plan, d, n, row)
    price = row["config"]["price_per_gpu_hour"]
    worst = v["worst_metric"]
    how = (f"{'PASS' if v['meets_slo'] else 'FAIL'}: worst {worst} at {v['worst_slo_ratio']:.2f}x "
           "its bound" if worst else "PASS")
    if v["overloaded"]:
        how += (f"; overloaded: {plan.load / n:.3g} req/s per replica is above the capacity bound "
                f"{d.bound_rate_per_s:.3g}")
    tried = {m: fleet_verdict(plan, d, m, r) for m, r in sorted(d.fleets.items())}
    out = {"name": f"{d.name}-x{n}", "design": d.name, "gpu": d.gpu, "tp": d.tp, "replicas": n,
           "strategy": d.strategy, "draft": d.draft, "gamma": row["config"]["gamma"],
           "gamma_auto": d.gamma == "auto", "draft_gpus": d.resolved.draft_gpus, "gpus": row["gpus"],
           "price_per_gpu_hour": price, "cost_per_hour": row["gpus"] * price,
           "cost_per_million_tokens": row["cost_per_million_tokens"],
           "capacity_rate_per_s": d.capacity_rate_per_s,
           "capacity_bound_rate_per_s": d.bound_rate_per_s,
           "meets_slo": v["meets_slo"], "overloaded": v["overloaded"],
           **{k: m for k, m in v["measured"].items()}}
    for key in PERCENTILES:
        if key not in out:
            metric, pct = PERCENTILES[key]
            out[key] = row[metric][pct]
    out.update(slo_ratio=v["slo_ratio"], worst_slo_ratio=v["worst_slo_ratio"], verdict=how,
               throughput_tokens_per_s=row["throughput_tokens_per_s"],
               throughput_requests_per_s=row["throughput_requests_per_s"],
               goodput_requests_per_s=row["goodput_requests_per_s"],
               latency_source=row["latency_source"],
               replicas_tried=[{"replicas": m, "meets_slo": t["meets_slo"],
                                "worst_slo_ratio": t["worst_slo_ratio"]} for m, t in tried.items()],
               capacity_probes=d.probes)
    return out


def rank(plan: PlanFile, designs: list[Design]) -> list[dict]:
    """Fleets meeting the SLO by the objective (ties: cost per hour, GPUs, name), then the rest by
    how far they miss. Auto replicas: each design's fewest passing replicas (else its largest
    tried); a replicas list: every count."""
    rows = []
    for d in designs:
        if isinstance(plan.search.replicas, list):
            rows += [fleet_row(plan, d, n, r) for n, r in sorted(d.fleets.items())]
            continue
        rows_d = {n: fleet_row(plan, d, n, r) for n, r in d.fleets.items()}
        passing = [n for n, r in rows_d.items() if r["meets_slo"]]
        if rows_d:
            rows.append(rows_d[min(passing) if passing else max(rows_d)])
    good = sorted((r for r in rows if r["meets_slo"]),
                  key=lambda r: (r[plan.objective], r["cost_per_hour"], r["gpus"], r["name"]))
    bad = sorted((r for r in rows if not r["meets_slo"]), key=lambda r: (r["worst_slo_ratio"], r["name"]))
    return good + bad


def _relative_paths(workload: dict, base: Path, out_dir: Path) -> dict:
    """Trace paths in a workload, re-expressed relative to the folder best.yaml is written to."""
    from simulator.workload import resolve_path
    w = {k: (dict(v) if isinstance(v, dict) else v) for k, v in workload.items()}
    for key in ("prompt_tokens", "output_tokens", "arrival"):
        if isinstance(w.get(key), dict) and "path" in w[key]:
            p = resolve_path(w[key]["path"], base, f"workload.{key}.path")
            w[key]["path"] = Path(os.path.relpath(p.resolve(), out_dir.resolve())).as_posix()
    return w


def best_scenario(plan: PlanFile, ranked: list[dict], designs: list[Design], base: Path,
                  out_dir: Path, few: int = 3) -> dict | None:
    """A runnable scenario of the best fleet (first, so `specsim run` gives it the same random
    stream as the plan did) and the next `few` fleets meeting the SLO, at the load."""
    good = [r for r in ranked if r["meets_slo"]][:1 + few]
    if not good:
        return None
    by = {d.name: d for d in designs}
    sc = scenario_dict(plan, f"{plan.name}-best",
                       [fleet_deployment(by[r["design"]], r["replicas"]) for r in good])
    sc["description"] = (f"specsim plan {plan.name}: the cheapest fleet by {plan.objective} that "
                         f"meets the SLO at {plan.load:g} req/s, and the next {len(good) - 1}. The "
                         "first reproduces the plan's figures exactly; the runner seeds the others "
                         "by their position, so they show other random draws of the same load")
    sc["workload"] = _relative_paths(sc["workload"], base, out_dir)
    return {k: sc[k] for k in ("name", "description", "seed", "workload", "slo", "deployments") if k in sc}


@dataclass
class PlanOutcome:
    result: dict  # plan.json
    best_scenario: dict | None  # best.yaml
    simulations: int  # tasks the plan needed
    simulated: int  # of which actually simulated (the rest came from the cache)


def run_plan(plan: PlanFile, base: Path, source: str, executor, cache: TaskCache, out_dir: Path,
             progress: Progress | None = None) -> PlanOutcome:
    designs, rejected, enumerated = prune(plan, base, source)
    run = Rounds(executor, cache, progress, len(designs) * (plan.search.bisection_steps + 2))
    capacity_search(plan, designs, base, run)
    evaluated = len(designs)
    if not isinstance(plan.search.replicas, list):
        for d in [d for d in designs if d.capacity_rate_per_s <= 0]:
            low = min(p["rate_per_s"] for p in d.probes)
            last = min(d.probes, key=lambda p: p["rate_per_s"])
            rejected.append({"name": d.name, "stage": "capacity",
                             "reason": f"one replica misses the SLO even at {low:.3g} req/s (worst "
                                       f"{last['worst_metric']} at {last['worst_slo_ratio']:.2f}x its bound)"})
        designs = [d for d in designs if d.capacity_rate_per_s > 0]
    confirm_fleets(plan, designs, base, run)
    ranked = rank(plan, designs)
    best = ranked[0] if ranked and ranked[0]["meets_slo"] else None
    result = {"plan": plan.name, "seed": plan.seed, "slo": plan.slo.bounds(), "load": plan.load,
              "objective": plan.objective, "budget": plan.budget.model_dump(),
              "candidates_enumerated": enumerated, "candidates_evaluated": evaluated,
              "simulations": run.tasks,
              "method": {"bisection_steps": plan.search.bisection_steps,
                         "requests_per_simulation": _workload(plan, 1.0)["requests"],
                         "prune_margin": PRUNE_MARGIN, "router": "least_outstanding",
                         "max_extra_replicas": plan.search.max_extra_replicas},
              "ranked": ranked, "best": best, "rejected": rejected,
              "scenario": str(out_dir / "best.yaml") if best else None}
    return PlanOutcome(result, best_scenario(plan, ranked, designs, base, out_dir), run.tasks,
                       cache.misses)
