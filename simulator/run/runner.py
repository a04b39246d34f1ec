"""Run a scenario: scenario -> deployments -> engine -> records -> metrics, for every sweep point.

The simulations (one per sweep point, deployment and replication: run/sim_jobs.py) run in this
process or on an executor (run/executors.py: local processes or Ray); the rows, the crossover and
the per-request table are assembled here in the same order either way. Returns plain data (the
summary dict and the per-request table); run/report.py writes it out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from simulator import __version__
from simulator.analysis.metrics import PERCENTILES
from simulator.analysis.crossover import crossover
from simulator.analysis.sdsl_summary import sdsl_summary
from simulator.analysis.steady_summary import (ci, invalidate_if_overloaded, kv_capacity,
                                               replicate_entry)
from simulator.config.schema import Scenario
from simulator.config.sweep import sweep_paths
from simulator.config.workload import Requests, generate, trace_cycles
from simulator.deploy.deployments import ResolvedDeployment, resolve
from simulator.deploy.fit import check_fits
from simulator.deploy.gamma import choose_gamma
from simulator.run.sim_jobs import (ProgressFactory, RunContext, SimJob, _expand,  # noqa: F401
                                    replication_seed, run_job, run_sim_job)


@dataclass
class RunResult:
    summary: dict
    requests: pd.DataFrame


def _crossovers(sc: Scenario, rows: list[dict], baseline: str) -> list[dict] | None:
    """The crossover along the sweep's first path, for each combination of the other paths'
    values (entries then carry `at`: {path: value}); None when the first path is not numeric."""
    first, *others = sweep_paths(sc)
    if not all(isinstance(r["sweep"][first], (int, float)) and not isinstance(r["sweep"][first], bool)
               for r in rows):
        return None
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps([r["sweep"][p] for p in others]), []).append(r)
    out = []
    for key, group in groups.items():
        for entry in crossover(group, baseline, first):
            if others:
                entry["at"] = dict(zip(others, json.loads(key)))
            out.append(entry)
    return out


def _summary(sc: Scenario, seed: int, rows: list[dict], used: list[ResolvedDeployment]) -> dict:
    baseline = sc.baseline or next((d.name for d in sc.deployments if d.strategy == "ar"), None)
    summary = {"scenario": sc.name, "seed": seed, "specsim_version": __version__,
               "replications": sc.replications, "deployments": rows}
    if sc.sweep is not None and baseline is not None:
        cross = _crossovers(sc, rows, baseline)
        if cross is not None:
            summary["crossover"] = cross
    for design, ref in (sc.compare if sc.sweep is not None else []):
        cross = _crossovers(sc, [r for r in rows if r["name"] in (design, ref)], ref)
        if cross is not None:
            summary.setdefault("crossover", []).extend(cross)
    if any(d.acceptance_sdsl is not None for d in used):
        summary["sdsl"] = sdsl_summary(rows, used)
    return summary


def check_scenario(sc: Scenario, base: Path) -> tuple[list[ResolvedDeployment], Requests]:
    """`specsim check`: resolve every deployment and check that the workload fits each (at every
    point of a grid sweep), without simulating (a SpecsimError names the first field that does not)."""
    deps = [resolve(d, i, base) for i, d in enumerate(sc.deployments)]
    req = generate(sc.workload, sc.seed, base)
    for i, (d, dep) in enumerate(zip(sc.deployments, deps)):
        if d.gamma == "auto":  # as `run` does: the chosen gamma sizes memory and the fit
            deps[i] = dep = resolve(d, i, base, gamma=choose_gamma(dep, sc.workload, req).gamma)
        check_fits(dep, req, f"deployments[{i}]")
    if sc.sweep is not None and sc.sweep.grid is not None:
        RunContext(sc, base).jobs()  # every grid point's deployments resolve and fit
    return deps, req


def _steady_keys(dep: ResolvedDeployment, row: dict, results: list[dict], req0: Requests,
                 seeds: list[int]) -> dict:
    """The steady-state keys of a row from its replications' results (replication 0's figures)."""
    figs = [x["fig"] for x in results]
    reps = [replicate_entry(sd, x["whole"], f) for sd, x, f in zip(seeds, results, figs)]
    keys = {**figs[0], **kv_capacity(dep.memory.kv_capacity_tokens, req0.prompt, req0.output)}
    over = [r for r, f in enumerate(figs) if f["overloaded"]]
    if over and not figs[0]["overloaded"]:
        keys["overloaded"] = True
        keys["overload"]["reason"] = "; ".join(f"replication {r}: {figs[r]['overload']['reason']}"
                                               for r in over)
    keys["overload"]["replications_overloaded"] = len(over)
    keys["replications"] = len(results)
    keys["replicates"] = reps
    keys["ci"] = ci(reps)
    return keys


def _trace_cycles(ctx: RunContext) -> list[dict]:
    """Every distinct cycled trace over the sweep points and replications (a count drawn over
    `duration_s` differs by replication; a fixed `requests` does not)."""
    out: list[dict] = []
    for pi, (_, point_sc) in enumerate(ctx.points):
        w = point_sc.workload
        for r in range(len(ctx.seeds)) if w.requests is None else (0,):
            out += [c for c in trace_cycles(w, ctx.requests(pi, r).n, ctx.base) if c not in out]
    return out


def run_scenario(sc: Scenario, base: Path, seed: int | None = None,
                 progress: ProgressFactory | None = None, executor=None,
                 done: Callable[[int], None] | None = None, percentiles: tuple = ()) -> RunResult:
    """Simulate every (sweep point, deployment), `replications` times each with seeds from
    replication_seed. Without `executor`, in this process, `progress(label, total)` returning an
    advance callback per simulation; with one (run/executors.py), as SimJobs on it, `done(n)`
    called as simulations finish (first `done(0, total)`). The result is the same either way."""
    ctx = RunContext(sc, base, seed, percentiles)
    jobs = ctx.jobs()
    if done is not None:
        done(0, len(jobs))
    if executor is None:
        results = [run_job(ctx, *j, progress) for j in jobs]
    else:
        data = sc.model_dump(mode="json", exclude_unset=True)
        results = executor.map([SimJob(data, str(base), ctx.seed, *j, ctx.percentiles) for j in jobs], done,
                               fn=run_sim_job)
    rows, tables, used = [], [], []
    it, n = iter(results), len(ctx.seeds)
    for pi in range(len(ctx.points)):
        for ei in range(len(ctx.expanded(pi))):
            dep = ctx.deployment(pi, ei)
            res = [next(it) for _ in range(n)]
            row = res[0]["row"]
            tables.append(res[0]["table"])
            row.update(_steady_keys(dep, row, res, ctx.requests(pi, 0), ctx.seeds))
            invalidate_if_overloaded(row)
            rows.append(row)
            used.append(dep)
    summary = _summary(sc, ctx.seed, rows, used)
    cycles = _trace_cycles(ctx)
    if cycles:  # `repeat: true` took some length trace round more than once
        summary["trace_cycles"] = cycles
    if ctx.pct != PERCENTILES:  # `--percentiles` chose more: which the distributions hold
        summary["percentiles"] = list(ctx.pct.values())
    return RunResult(summary, pd.concat(tables, ignore_index=True))
