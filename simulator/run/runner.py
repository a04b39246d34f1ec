"""Run a scenario: scenario -> deployments -> engine -> records -> metrics, for every sweep point.

Returns plain data (the summary dict and the per-request table); report.py writes it out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pandas as pd

from simulator import __version__
from simulator.deploy.gamma import choose_gamma
from simulator.physics import sdsl
from simulator.deploy.deployments import ResolvedDeployment, band_variants, resolve
from simulator.engine.replica import Simulation
from simulator.errors import SpecsimError
from simulator.analysis.metrics import request_table, stops_paying, summarise
from simulator.config.schema import Deployment, Scenario
from simulator.config.workload import Requests, generate


@dataclass
class RunResult:
    summary: dict
    requests: pd.DataFrame


def check_fits(dep: ResolvedDeployment, req: Requests, field: str) -> None:
    """Every request must fit the model's context and, alone, the deployment's KV cache."""
    longest = int((req.prompt + req.output).max())
    if longest > dep.target.max_position:
        raise SpecsimError(f"{field}: a request of {longest} tokens (prompt + output) exceeds "
                           f"{dep.target.name}'s context of {dep.target.max_position}; lower "
                           "workload max lengths")
    bs = dep.scheduler.block_size
    need = -(-(longest + dep.gamma) // bs) * bs
    if need > dep.memory.kv_capacity_tokens:
        raise SpecsimError(f"{field}: a request of {longest} tokens needs {need} KV slots but the "
                           f"deployment holds {dep.memory.kv_capacity_tokens}; lower the lengths "
                           "or raise tp / gpu_memory_utilization")


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


def sdsl_summary(rows: list[dict], deps: list[ResolvedDeployment]) -> list[dict]:
    """Per target (and sweep point): the SDSL law's optimal draft size next to the drafts the
    scenario simulated with law-derived acceptance, ranked by simulated throughput.

    `rows` and `deps` are aligned: the summary row of each simulated deployment and its
    resolved deployment (whose gamma may differ between sweep points)."""
    groups: dict[tuple, list[tuple[dict, ResolvedDeployment]]] = {}
    for row, dep in zip(rows, deps, strict=True):
        if dep.acceptance_sdsl is None:
            continue
        point = tuple(row.get("sweep", {}).items())
        key = (dep.target.name, dep.gpu.name, dep.tp, dep.latency_source, point)
        groups.setdefault(key, []).append((row, dep))
    out = []
    for (target, gpu, tp, source, point), group in groups.items():
        dep0 = group[0][1]
        m, info = dep0.target.params, dep0.acceptance_sdsl
        d = info.get("training_tokens", sdsl.DEFAULT_TRAINING_TOKENS)
        law = sdsl.PPL_LAWS[info.get("ppl_law", sdsl.BESIROGLU_2024.name)]
        n_star = sdsl.optimal_draft_size_linear(m)
        drafts = sorted(({"design": row["name"], "draft": dep.draft.name,
                          "draft_params": dep.draft.params, "variant": dep.acceptance_sdsl["variant"],
                          "alpha": dep.acceptance.alpha, "gamma": dep.gamma,
                          "throughput_tokens_per_s": row["throughput_tokens_per_s"]}
                         for row, dep in group), key=lambda r: -r["throughput_tokens_per_s"])
        central = [r for r in drafts if r["variant"] == "alpha"]  # band ends left out of the verdict
        nearest = min(central, key=lambda r: abs(math.log(r["draft_params"] / n_star)))
        entry = {"target": target, "gpu": gpu, "tp": tp, "latency_source": source,
                 "target_params": m, "n_star_params": n_star,
                 "n_star_optimizer_params": sdsl.optimal_draft_size(m, d, law).n_params,
                 "n_star_training_tokens": d, "n_star_ppl_law": law.name,
                 "best_by_throughput": central[0]["design"], "nearest_to_n_star": nearest["design"],
                 "drafts": drafts}
        if point:
            entry["sweep"] = dict(point)
        out.append(entry)
    return out


def _describe(dep: ResolvedDeployment) -> dict:
    d = {"target": dep.target.name, "draft": dep.draft.name if dep.draft else None,
         "gpu": dep.gpu.name, "tp": dep.tp, "replicas": dep.replicas,
         "gamma": dep.gamma if dep.strategy != "ar" else None,
         "alpha": None, "per_position": None,
         "price_per_gpu_hour": dep.price_per_gpu_hour, "memory": dep.memory.as_dict()}
    if dep.acceptance is not None:
        d["alpha"] = dep.acceptance.alpha
        d["per_position"] = dep.acceptance.per_position
    if dep.draft_placement is not None:
        d["draft_placement"] = dep.draft_placement
    if dep.draft_placement == "dedicated":
        d.update(draft_gpu=dep.draft_gpu.name, draft_gpus=dep.draft_gpus,
                 handshake_fixed_s=dep.handshake.fixed_s,
                 handshake_bytes_per_seq=dep.handshake.bytes_per_seq,
                 draft_memory=dep.draft_memory.as_dict())
    if dep.strategy == "ssd":
        d["ssd"] = dep.ssd.model_dump()
    if dep.acceptance_sdsl is not None:
        d["acceptance_sdsl"] = dep.acceptance_sdsl
    if dep.gamma_choice is not None:
        d["gamma_auto"] = True
    return d


def crossover(summary_rows: list[dict], baseline: str, param: str) -> list[dict]:
    """Per design: throughput ratio to the baseline at each sweep point, and where it stops paying
    for good (metrics.stops_paying)."""
    by = {}
    for row in summary_rows:
        by.setdefault(row["name"], []).append(row)
    base = {r["sweep"][param]: r["throughput_tokens_per_s"] for r in by.get(baseline, [])}
    out = []
    for name, rows in by.items():
        if name == baseline:
            continue
        ratios = [(r["sweep"][param], r["throughput_tokens_per_s"] / base[r["sweep"][param]])
                  for r in rows if base.get(r["sweep"][param])]
        stops, interp = stops_paying([x for x, _ in ratios], [r for _, r in ratios])
        out.append({"design": name, "baseline": baseline, "param": param,
                    "speedup": [{param: x, "ratio": s} for x, s in ratios],
                    "stops_paying_at": stops, "stops_paying_at_interpolated": interp})
    return out


def run_scenario(sc: Scenario, base: Path, seed: int | None = None,
                 progress: Callable[[str, int], Callable[[int], None]] | None = None) -> RunResult:
    """Simulate every (sweep point, deployment). `progress(label, total)` returns an advance callback."""
    seed = sc.seed if seed is None else seed
    expanded = _expand(sc, base)
    rows, tables, used = [], [], []
    by_gamma: dict[tuple, ResolvedDeployment] = {}  # gamma: auto, resolved once per chosen gamma
    for point, psc in _points(sc):
        req = generate(psc.workload, seed, base)
        for i, (index, d, variant, dep) in enumerate(expanded):
            if d.gamma == "auto":  # chosen at this sweep point's operating point
                choice = choose_gamma(dep, psc.workload, req)
                key = (index, variant, choice.gamma)
                if key not in by_gamma:
                    by_gamma[key] = resolve(d, index, base, variant=variant, gamma=choice.gamma)
                dep = replace(by_gamma[key], gamma_choice=choice.as_dict())
            used.append(dep)
            check_fits(dep, req, f"deployments[{index}]")
            label = dep.name + (f" {point}" if point else "")
            for lat in (dep.target_latency, dep.draft_latency):  # stats per run, not cumulative
                getattr(lat, "reset_stats", lambda: None)()
            sim = Simulation(dep, req, seed=seed * 7919 + i,
                             progress=progress(label, req.n) if progress else None)
            rec = sim.run()
            slo = psc.slo
            m = summarise(rec, dep.gpus, dep.price_per_gpu_hour,
                          slo.ttft_s if slo else None, slo.tpot_s if slo else None)
            row = {"name": dep.name, "strategy": dep.strategy, "gpus": dep.gpus}
            if point:
                row["sweep"] = point
            row.update(m)
            row["latency_source"] = dep.latency_source
            row["latency_notes"] = dep.latency_notes
            row["latency_stats"] = {"target": getattr(dep.target_latency, "stats", None),
                                    "draft": getattr(dep.draft_latency, "stats", None)}
            row["config"] = _describe(dep)
            if dep.variant_of is not None:
                row["variant_of"] = dep.variant_of
            if dep.gamma_choice is not None:
                row["gamma_choice"] = dep.gamma_choice
            rows.append(row)
            t = request_table(rec)
            t.insert(0, "deployment", dep.name)
            if point:
                t.insert(1, sc.sweep.param, next(iter(point.values())))
            tables.append(t)
    baseline = sc.baseline or next((d.name for d in sc.deployments if d.strategy == "ar"), None)
    summary = {"scenario": sc.name, "seed": seed, "specsim_version": __version__,
               "deployments": rows}
    if sc.sweep is not None and baseline is not None:
        summary["crossover"] = crossover(rows, baseline, sc.sweep.param)
    for design, ref in (sc.compare if sc.sweep is not None else []):
        pair = [r for r in rows if r["name"] in (design, ref)]
        summary.setdefault("crossover", []).extend(crossover(pair, ref, sc.sweep.param))
    if any(d.acceptance_sdsl is not None for d in used):
        summary["sdsl"] = sdsl_summary(rows, used)
    return RunResult(summary, pd.concat(tables, ignore_index=True))
