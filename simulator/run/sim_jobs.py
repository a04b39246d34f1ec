"""The simulations of a scenario run as independent jobs: one per (sweep point, deployment,
replication), in that order.

`RunContext` holds what every job of a scenario shares (the sweep points, the deployments resolved
once per content, the generated requests); `run_job` runs one simulation and returns plain data
(the summary row and request table of replication 0, each replication's steady-state figures).
`SimJob` is a job as plain data, so `specsim run --workers N` / `--executor ray` can run it in
another process (`run_sim_job` rebuilds the context there once per scenario). A job's seed comes
from the scenario seed, the replication and the deployment's index, never from the worker.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from simulator.analysis.metrics import PERCENTILES, percentile_set, request_table, summarise
from simulator.analysis.steady_summary import steady_figures
from simulator.config.schema import Deployment, Scenario
from simulator.config.sweep import point_words, sweep_points
from simulator.config.workload import Requests, generate
from simulator.deploy.deployments import ResolvedDeployment, band_variants, resolve
from simulator.deploy.describe import describe
from simulator.deploy.fit import check_fits
from simulator.deploy.gamma import choose_gamma
from simulator.engine.simulation import Simulation
from simulator.errors import SpecsimError

ProgressFactory = Callable[[str, int], Callable[[int], None]]


def replication_seed(seed: int, r: int) -> int:
    """Replication r's seed: the scenario seed itself for r = 0 (a one-replication run is the run
    as before), else drawn from (seed, r) alone, never from the worker or the order of runs."""
    if r == 0:
        return seed
    return int(np.random.SeedSequence([seed, r, 0x4E9]).generate_state(1, np.uint32)[0])


def _expand(sc: Scenario, base: Path, resolved=None) -> list[tuple[int, Deployment, str, ResolvedDeployment]]:
    """(scenario index, deployment, band variant, resolved) for every deployment and band variant."""
    res = resolved or (lambda d, i, v: resolve(d, i, base, variant=v))
    out = [(i, d, v, res(d, i, v)) for i, d in enumerate(sc.deployments) for v in band_variants(d)]
    names = [dep.name for *_, dep in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecsimError(f"deployments: band variants collide with other deployment names: {dup}")
    return out


class RunContext:
    """A scenario's sweep points, deployments and requests, each built once (deployments once per
    distinct content, so an unchanged deployment keeps one latency backend for the whole sweep)."""

    def __init__(self, sc: Scenario, base: Path, seed: int | None = None,
                 percentiles: tuple = ()):
        self.sc, self.base = sc, Path(base)
        self.percentiles = tuple(percentiles)  # extra summary percentiles (`--percentiles`)
        self.pct = percentile_set(self.percentiles)
        self.seed = sc.seed if seed is None else seed
        self.seeds = [replication_seed(self.seed, r) for r in range(sc.replications)]
        self.points = sweep_points(sc)
        self._resolved: dict[tuple, ResolvedDeployment] = {}
        self._expanded: dict[int, list] = {}
        self._requests: dict[tuple[int, int], Requests] = {}
        self._at: dict[tuple[int, int], ResolvedDeployment] = {}

    def _resolve(self, d: Deployment, index: int, variant: str, gamma: int | None = None):
        key = (d.model_dump_json(), index, variant, gamma)
        if key not in self._resolved:
            self._resolved[key] = resolve(d, index, self.base, variant=variant, gamma=gamma)
        return self._resolved[key]

    def expanded(self, pi: int) -> list:
        if pi not in self._expanded:
            self._expanded[pi] = _expand(self.points[pi][1], self.base, self._resolve)
        return self._expanded[pi]

    def requests(self, pi: int, r: int) -> Requests:
        if (pi, r) not in self._requests:
            self._requests[(pi, r)] = generate(self.points[pi][1].workload, self.seeds[r], self.base)
        return self._requests[(pi, r)]

    def deployment(self, pi: int, ei: int) -> ResolvedDeployment:
        """The deployment as it runs at sweep point pi: `gamma: auto` is chosen at this point's
        operating point (with replication 0's requests) and resolved once per chosen gamma."""
        if (pi, ei) in self._at:
            return self._at[(pi, ei)]
        index, d, variant, dep = self.expanded(pi)[ei]
        if d.gamma == "auto":
            choice = choose_gamma(dep, self.points[pi][1].workload, self.requests(pi, 0))
            dep = replace(self._resolve(d, index, variant, choice.gamma), gamma_choice=choice.as_dict())
        self._at[(pi, ei)] = dep
        return dep

    def jobs(self) -> list[tuple[int, int, int]]:
        """(point, deployment, replication) of every simulation, in the report's order, after
        resolving each point's deployments and checking that each workload fits each (the first
        that does not is an error naming the sweep point)."""
        out = []
        for pi, (point, _) in enumerate(self.points):
            try:
                out += self._point_jobs(pi)
            except SpecsimError as e:
                raise SpecsimError(f"{e} (at sweep point {point_words(point)})" if point else str(e)) from None
            self._requests = {k: v for k, v in self._requests.items() if k[1] == 0}
        return out

    def _point_jobs(self, pi: int) -> list[tuple[int, int, int]]:
        out = []
        for ei, (index, *_rest) in enumerate(self.expanded(pi)):
            dep = self.deployment(pi, ei)
            for r in range(len(self.seeds)):
                check_fits(dep, self.requests(pi, r), f"deployments[{index}]")
                out.append((pi, ei, r))
        return out


def _simulate(dep: ResolvedDeployment, req: Requests, seed: int, label: str,
              progress: ProgressFactory | None):
    """One simulation run; the backends' per-run statistics start afresh."""
    for lat in (dep.target_latency, dep.draft_latency):
        if lat is not None:
            lat.reset_stats()
    sim = Simulation(dep, req, seed=seed, progress=progress(label, req.n) if progress else None)
    return sim.run()


def summary_row(dep: ResolvedDeployment, rec, point: dict | None, slo,
                pct: dict = PERCENTILES) -> dict:
    m = summarise(rec, dep.gpus, dep.price_per_gpu_hour,
                  slo.ttft_s if slo else None, slo.tpot_s if slo else None, pct)
    row = {"name": dep.name, "strategy": dep.strategy, "gpus": dep.gpus}
    if point:
        row["sweep"] = dict(point)
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


def run_job(ctx: RunContext, pi: int, ei: int, r: int, progress: ProgressFactory | None = None) -> dict:
    """Simulate (point pi, deployment ei, replication r). Replication 0 returns the summary row
    and the request table (one column per swept path); every replication its steady-state
    figures and whole-run throughput."""
    point, psc = ctx.points[pi]
    dep, req = ctx.deployment(pi, ei), ctx.requests(pi, r)
    label = " · ".join(x for x in (dep.name, point_words(point), f"rep {r}" if r else "") if x)
    rec = _simulate(dep, req, ctx.seeds[r] * 7919 + ei, label, progress)
    out = {"fig": steady_figures(rec, req.concurrency, getattr(psc.workload.arrival, "rate_per_s", None))}
    if r == 0:  # the row's figures; its latency stats are this run's
        out["row"] = summary_row(dep, rec, point, psc.slo, ctx.pct)
        out["whole"] = out["row"]["throughput_tokens_per_s"]
        t = request_table(rec)
        t.insert(0, "deployment", dep.name)
        for j, (path, value) in enumerate((point or {}).items()):
            t.insert(1 + j, path, [value] * len(t))
        out["table"] = t
    else:
        out["whole"] = summarise(rec, dep.gpus, dep.price_per_gpu_hour, None, None)["throughput_tokens_per_s"]
    return out


@dataclass(frozen=True)
class SimJob:
    """One simulation as plain data: the scenario's content, its folder, the run's seed and the
    (point, deployment, replication) indices."""
    scenario: dict
    base: str
    seed: int
    point: int
    design: int
    replication: int
    percentiles: tuple = ()


_CONTEXTS: dict[str, RunContext] = {}  # per worker process: the context of the scenario it runs


def run_sim_job(job: SimJob) -> dict:
    """run_job for a SimJob, in whichever process runs it (the context is built once per scenario)."""
    from simulator.config.loading import parse_scenario
    key = hashlib.sha256(json.dumps([job.scenario, job.base, job.seed, job.percentiles],
                                    sort_keys=True).encode()).hexdigest()
    if key not in _CONTEXTS:
        _CONTEXTS.clear()
        _CONTEXTS[key] = RunContext(parse_scenario(job.scenario, f"<scenario {job.scenario.get('name')}>"),
                                    Path(job.base), job.seed, job.percentiles)
    return run_job(_CONTEXTS[key], job.point, job.design, job.replication)
