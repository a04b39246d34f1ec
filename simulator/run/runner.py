"""Run a scenario: scenario -> deployments -> engine -> records -> metrics, for every sweep point.

Returns plain data (the summary dict and the per-request table); run/report.py writes it out.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from simulator import __version__
from simulator.analysis.crossover import crossover
from simulator.analysis.metrics import request_table, summarise
from simulator.analysis.sdsl_summary import sdsl_summary
from simulator.analysis.steady_summary import (ci, invalidate_if_overloaded, kv_capacity,
                                               replicate_entry, steady_figures)
from simulator.config.schema import Deployment, Scenario
from simulator.config.workload import Requests, generate
from simulator.deploy.deployments import ResolvedDeployment, band_variants, resolve
from simulator.deploy.describe import describe
from simulator.deploy.fit import check_fits
from simulator.deploy.gamma import choose_gamma
from simulator.engine.simulation import Simulation
from simulator.errors import SpecsimError


@dataclass
class RunResult:
    summary: dict
    requests: pd.DataFrame


def _points(sc: Scenario) -> list[tuple[dict | None, Scenario]]:
    if sc.sweep is None:
        return [(None, sc)]
    out = []
    for v in sc.sweep.values:
        value = int(v) if sc.sweep.param == "concurrency" else float(v)
        arrival = sc.workload.arrival.model_copy(update={sc.sweep.param: value})
        wl = sc.workload.model_copy(update={"arrival": arrival})
        out.append(({sc.sweep.param: value}, sc.model_copy(update={"workload": wl})))
    return out


def _expand(sc: Scenario, base: Path) -> list[tuple[int, Deployment, str, ResolvedDeployment]]:
    """(scenario index, deployment, band variant, resolved) for every deployment and band variant."""
    out = [(i, d, v, resolve(d, i, base, variant=v))
           for i, d in enumerate(sc.deployments) for v in band_variants(d)]
    names = [dep.name for *_, dep in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecsimError(f"deployments: band variants collide with other deployment names: {dup}")
    return out


def _resolve_at_point(d: Deployment, index: int, variant: str, dep: ResolvedDeployment,
                      psc: Scenario, req: Requests, base: Path, by_gamma: dict) -> ResolvedDeployment:
    """The deployment as it runs at one sweep point: `gamma: auto` is chosen at this point's
    operating point and resolved once per chosen gamma (cached in `by_gamma`)."""
    if d.gamma != "auto":
        return dep
    choice = choose_gamma(dep, psc.workload, req)
    key = (index, variant, choice.gamma)
    if key not in by_gamma:
        by_gamma[key] = resolve(d, index, base, variant=variant, gamma=choice.gamma)
    return replace(by_gamma[key], gamma_choice=choice.as_dict())


def _simulate(dep: ResolvedDeployment, req: Requests, seed: int, label: str,
              progress: Callable[[str, int], Callable[[int], None]] | None):
    """One simulation run; the backends' per-run statistics start afresh."""
    for lat in (dep.target_latency, dep.draft_latency):
        if lat is not None:
            lat.reset_stats()
    sim = Simulation(dep, req, seed=seed, progress=progress(label, req.n) if progress else None)
    return sim.run()


def _summary_row(dep: ResolvedDeployment, rec, point: dict | None, slo) -> dict:
    m = summarise(rec, dep.gpus, dep.price_per_gpu_hour,
                  slo.ttft_s if slo else None, slo.tpot_s if slo else None)
    row = {"name": dep.name, "strategy": dep.strategy, "gpus": dep.gpus}
    if point:
        row["sweep"] = point
    row.update(m)
    row.update(_total_tokens(rec, m))
    row["latency_source"] = dep.latency_source
    row["latency_notes"] = dep.latency_notes
    row["latency_stats"] = {"target": dep.target_latency.stats,
                            "draft": dep.draft_latency.stats if dep.draft_latency else None}
    row["config"] = describe(dep)
    if dep.variant_of is not None:
        row["variant_of"] = dep.variant_of
    if dep.gamma_choice is not None:
        row["gamma_choice"] = dep.gamma_choice
    return row


def _total_tokens(rec, m: dict) -> dict:
    """vLLM `bench serve`'s total token throughput: (prompt + output tokens of the completed
    requests) / the same duration as the output throughput."""
    prompt = int(rec.prompt[~np.isnan(rec.finish)].sum())
    d = m["duration_s"]
    return {"prompt_tokens": prompt,
            "throughput_total_tokens_per_s": (prompt + m["output_tokens"]) / d if d > 0 else 0.0}


def _summary(sc: Scenario, seed: int, rows: list[dict], used: list[ResolvedDeployment]) -> dict:
    baseline = sc.baseline or next((d.name for d in sc.deployments if d.strategy == "ar"), None)
    summary = {"scenario": sc.name, "seed": seed, "specsim_version": __version__,
               "replications": sc.replications, "deployments": rows}
    if sc.sweep is not None and baseline is not None:
        summary["crossover"] = crossover(rows, baseline, sc.sweep.param)
    for design, ref in (sc.compare if sc.sweep is not None else []):
        pair = [r for r in rows if r["name"] in (design, ref)]
        summary.setdefault("crossover", []).extend(crossover(pair, ref, sc.sweep.param))
    if any(d.acceptance_sdsl is not None for d in used):
        summary["sdsl"] = sdsl_summary(rows, used)
    return summary


def check_scenario(sc: Scenario, base: Path) -> tuple[list[ResolvedDeployment], Requests]:
    """`specsim check`: resolve every deployment and check that the workload fits each, without
    simulating (a SpecsimError names the first field that does not)."""
    deps = [resolve(d, i, base) for i, d in enumerate(sc.deployments)]
    req = generate(sc.workload, sc.seed, base)
    for i, dep in enumerate(deps):
        check_fits(dep, req, f"deployments[{i}]")
    return deps, req


def replication_seed(seed: int, r: int) -> int:
    """Replication r's seed: the scenario seed itself for r = 0 (a one-replication run is the run
    as before), else drawn from (seed, r) alone, never from the worker or the order of runs."""
    if r == 0:
        return seed
    return int(np.random.SeedSequence([seed, r, 0x4E9]).generate_state(1, np.uint32)[0])


def _steady_keys(dep: ResolvedDeployment, row: dict, recs: list, reqs: list[Requests],
                 seeds: list[int], psc: Scenario) -> dict:
    """The steady-state keys of a row from its replications' records (replication 0's figures)."""
    rate = getattr(psc.workload.arrival, "rate_per_s", None)
    figs = [steady_figures(rec, req.concurrency, rate) for rec, req in zip(recs, reqs)]
    whole = [row["throughput_tokens_per_s"],
             *(summarise(rec, dep.gpus, dep.price_per_gpu_hour, None, None)["throughput_tokens_per_s"]
               for rec in recs[1:])]
    reps = [replicate_entry(*x) for x in zip(seeds, whole, figs)]
    keys = {**figs[0], **kv_capacity(dep.memory.kv_capacity_tokens, reqs[0].prompt, reqs[0].output)}
    over = [r for r, f in enumerate(figs) if f["overloaded"]]
    if over and not figs[0]["overloaded"]:
        keys["overloaded"] = True
        keys["overload"]["reason"] = "; ".join(f"replication {r}: {figs[r]['overload']['reason']}"
                                               for r in over)
    keys["overload"]["replications_overloaded"] = len(over)
    keys["replications"] = len(recs)
    keys["replicates"] = reps
    keys["ci"] = ci(reps)
    return keys


def run_scenario(sc: Scenario, base: Path, seed: int | None = None,
                 progress: Callable[[str, int], Callable[[int], None]] | None = None) -> RunResult:
    """Simulate every (sweep point, deployment), `replications` times each with seeds from
    replication_seed. `progress(label, total)` returns an advance callback."""
    seed = sc.seed if seed is None else seed
    seeds = [replication_seed(seed, r) for r in range(sc.replications)]
    expanded = _expand(sc, base)
    rows, tables, used = [], [], []
    by_gamma: dict[tuple, ResolvedDeployment] = {}  # gamma: auto, resolved once per chosen gamma
    for point, psc in _points(sc):
        reqs = [generate(psc.workload, sd, base) for sd in seeds]  # shared by the deployments
        for i, (index, d, variant, dep) in enumerate(expanded):
            dep = _resolve_at_point(d, index, variant, dep, psc, reqs[0], base, by_gamma)
            used.append(dep)
            label = dep.name + (f" {point}" if point else "")
            recs, row = [], None
            for r, (sd, req) in enumerate(zip(seeds, reqs)):
                check_fits(dep, req, f"deployments[{index}]")
                rec = _simulate(dep, req, sd * 7919 + i, label + (f" rep {r}" if r else ""), progress)
                if r == 0:  # the row's figures; its latency stats are this run's
                    row = _summary_row(dep, rec, point, psc.slo)
                    t = request_table(rec)
                    t.insert(0, "deployment", dep.name)
                    if point:
                        t.insert(1, sc.sweep.param, next(iter(point.values())))
                    tables.append(t)
                recs.append(rec)
            row.update(_steady_keys(dep, row, recs, reqs, seeds, psc))
            invalidate_if_overloaded(row)
            rows.append(row)
    return RunResult(_summary(sc, seed, rows, used), pd.concat(tables, ignore_index=True))
