"""`specsim plan`: find the cheapest fleet that meets an SLO at a load.

Method (each step's numbers come from the simulator itself, never from a fitted shortcut; the
search space, bounds, pruning and verdict live in simulator/run/plan_space.py):
1. Enumerate designs: gpu x tp x strategy x draft x gamma, each a scenario deployment.
2. Prune what cannot work, with the reason: the deployment resolver refuses it (it does not fit
   in memory, tp does not divide the heads, ...); a request does not fit its KV cache; its mean
   TPOT at batch 1 is above PRUNE_MARGIN x the SLO's; or an analytic capacity bound times the
   most replicas the budget allows is below the load. The bound is one replica's decode
   throughput at its largest batch (min(max_num_seqs, KV tokens / mean context)) divided by the
   mean output length, from the latency backend's own step times (simulator.deploy.gamma's ar_step_time /
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from simulator.config.plan import PlanFile
from simulator.run.executors import Task, TaskCache, run_tasks
from simulator.run.plan_space import (PERCENTILES, PRUNE_MARGIN, Design, fleet_verdict,
                                      max_replicas, prune, verdict)

Progress = Callable[[str, int, int], None]  # (what is running, tasks done, tasks expected)


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

def fleet_cost(row: dict) -> float | None:
    """$/Mtok of a simulated fleet, the raw figure when the run was overloaded (which fails it)."""
    c = row["cost_per_million_tokens"]
    return c if c is not None else (row.get("overload") or {}).get("cost_per_million_tokens")


def fleet_row(plan: PlanFile, d: Design, n: int, row: dict) -> dict:
    """One ranked entry: the design, its fleet's figures and its SLO verdict."""
    v = fleet_verdict(plan, d, n, row)
    price = row["config"]["price_per_gpu_hour"]
    worst = v["worst_metric"]
    how = (f"{'PASS' if v['meets_slo'] else 'FAIL'}: worst {worst} at {v['worst_slo_ratio']:.2f}x "
           "its bound" if worst else "PASS")
    if v["overloaded"]:
        how += (f"; overloaded: {plan.load / n:.3g} req/s per replica is above the capacity bound "
                f"{d.bound_rate_per_s:.3g}" if plan.load / n > d.bound_rate_per_s
                else f"; overloaded: {(row.get('overload') or {}).get('reason', 'queue grows')}")
    tried = {m: fleet_verdict(plan, d, m, r) for m, r in sorted(d.fleets.items())}
    out = {"name": f"{d.name}-x{n}", "design": d.name, "gpu": d.gpu, "tp": d.tp, "replicas": n,
           "strategy": d.strategy, "draft": d.draft, "gamma": row["config"]["gamma"],
           "gamma_auto": d.gamma == "auto", "draft_gpus": d.resolved.draft_gpus, "gpus": row["gpus"],
           "price_per_gpu_hour": price, "cost_per_hour": row["gpus"] * price,
           # an overloaded row withholds its $/Mtok; the plan ranks it (as failing) by the raw one
           "cost_per_million_tokens": fleet_cost(row),
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
    from simulator.config.workload import resolve_path
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
