"""`specsim calibrate-engine`: fit a serving engine's implementation costs to a user's own
benchmark of it (issue 16 item 3; MODEL.md section 6b).

Measurements are decode-phase figures of one deployment at a few closed-loop concurrencies, AR
and SD: mean TPOT (and output tokens/s, used when TPOT is missing). They come from the JSON files
`vllm bench serve --save-result` writes (keys `max_concurrency`, `mean_tpot_ms`,
`output_throughput`; strategy and gamma given on the command line or in the file name as
`...-ar-...` / `...-sd-g4-...`) or from a CSV with columns concurrency, strategy, gamma,
output_tok_s, tpot_ms[, ttft_ms].

The model predicted for a measurement is the one the engine runs (simulator/deploy/gamma.py): the
TPOT of a decode step at that batch and at the workload's mean decode context is
ar_step_time(b) for AR and sd_round_time(b, gamma) / E[tokens per round] for SD, with the
deployment's backends wrapped in the candidate engine costs. The fit is least squares on
log(predicted / measured) over the chosen EngineCosts fields (scipy.optimize.least_squares,
bounded at >= 0), starting from the deployment's preset.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from simulator.deploy.deployments import ResolvedDeployment
from simulator.deploy.gamma import ar_step_time, sd_round_time
from simulator.errors import SpecsimError
from simulator.user_files import load_user_json
from simulator.latency import serving
from simulator.latency.engine_costs import EngineLatency
from simulator.physics.acceptance import expected_tokens_per_round

DEFAULT_FIELDS = ("cpu_step_fixed_s", "cpu_per_seq_s", "proposer_step_s")


@dataclass(frozen=True)
class Measurement:
    concurrency: int
    strategy: str  # "ar" or "sd"
    gamma: int
    tpot_s: float
    source: str  # file (and row) it came from


def _positive(v, what: str, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise SpecsimError(f"{where}: {what} must be a number, got {v!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise SpecsimError(f"{where}: {what} must be a positive finite number, got {v!r}")
    return x


def _strategy(s: str, gamma, where: str) -> tuple[str, int]:
    if s not in ("ar", "sd"):
        raise SpecsimError(f"{where}: strategy must be 'ar' or 'sd', got {s!r}")
    g = 0 if s == "ar" else int(_positive(gamma, "gamma", where))
    return s, g


def _from_csv(path: Path) -> list[Measurement]:
    out = []
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines()))
    except UnicodeDecodeError:
        raise SpecsimError(f"{path}: not a UTF-8 CSV") from None
    need = {"concurrency", "strategy"}
    if not rows or not need <= set(rows[0]) or not ({"tpot_ms", "output_tok_s"} & set(rows[0])):
        raise SpecsimError(f"{path}: expected columns concurrency, strategy, gamma, output_tok_s, "
                           "tpot_ms[, ttft_ms]")
    for i, r in enumerate(rows, start=2):
        where = f"{path} row {i}"
        c = int(_positive(r["concurrency"], "concurrency", where))
        s, g = _strategy(r["strategy"].strip(), r.get("gamma"), where)
        if r.get("tpot_ms"):
            tpot = _positive(r["tpot_ms"], "tpot_ms", where) / 1e3
        else:
            tpot = c / _positive(r["output_tok_s"], "output_tok_s", where)
        out.append(Measurement(c, s, g, tpot, where))
    return out


def _from_vllm_json(path: Path, strategy: str | None, gamma: int | None) -> Measurement:
    d = load_user_json(path, "`vllm bench serve` result JSON")
    if not isinstance(d, dict) or "max_concurrency" not in d:
        raise SpecsimError(f"{path}: expected a `vllm bench serve --save-result` file with "
                           "max_concurrency (a closed-loop run)")
    m = re.search(r"(?:^|[-_.])(ar|sd)(?:[-_.]g(\d+))?(?:[-_.]|$)", path.stem)
    s = strategy or (m.group(1) if m else None)
    g = gamma if gamma is not None else (int(m.group(2)) if m and m.group(2) else None)
    if s is None:
        raise SpecsimError(f"{path}: say whether it is AR or SD (--strategy, or '-ar-' / '-sd-g4-' "
                           "in the file name)")
    s, g = _strategy(s, g, str(path))
    c = int(_positive(d["max_concurrency"], "max_concurrency", str(path)))
    if d.get("mean_tpot_ms"):
        tpot = _positive(d["mean_tpot_ms"], "mean_tpot_ms", str(path)) / 1e3
    else:
        tpot = c / _positive(d.get("output_throughput"), "output_throughput", str(path))
    return Measurement(c, s, g, tpot, str(path))


def read_measurements(paths: list[Path], strategy: str | None = None,
                      gamma: int | None = None) -> list[Measurement]:
    out: list[Measurement] = []
    for p in paths:
        if not p.is_file():
            raise SpecsimError(f"{p}: no such file")
        out.extend(_from_csv(p) if p.suffix.lower() == ".csv" else [_from_vllm_json(p, strategy, gamma)])
    if not out:
        raise SpecsimError("calibrate-engine: no measurements given")
    return out


def _wrap(dep: ResolvedDeployment, costs: serving.EngineCosts, gamma: int):
    """The deployment's kernels (the wrapped backends) under candidate engine costs."""
    t_in = getattr(dep.target_latency, "inner", dep.target_latency)
    d_in = getattr(dep.draft_latency, "inner", dep.draft_latency)
    t = EngineLatency(t_in, costs, n_layers=dep.target.n_layers, tp=dep.tp, vocab=dep.target.vocab,
                      bandwidth=dep.gpu.bandwidth_tbps * 1e12, role="target", gamma=gamma)
    d = None
    if d_in is not None:
        gpu = dep.draft_gpu or dep.gpu
        d = EngineLatency(d_in, costs, n_layers=dep.draft.n_layers, tp=dep.draft_tp,
                          vocab=dep.draft.vocab, bandwidth=gpu.bandwidth_tbps * 1e12,
                          role="draft", gamma=gamma)
    return t, d


def predict_tpot(dep: ResolvedDeployment, costs: serving.EngineCosts, m: Measurement,
                 context: int) -> float:
    """Decode TPOT of measurement m's configuration under `costs` (see the module docstring)."""
    if m.strategy == "ar":
        t, _ = _wrap(dep, costs, 0)
        return ar_step_time(t, m.concurrency, context)
    if dep.draft is None or dep.acceptance is None or dep.acceptance.alpha is None:
        raise SpecsimError(f"{m.source}: an SD measurement needs a deployment with a draft and "
                           "an acceptance alpha")
    t, d = _wrap(dep, costs, m.gamma)
    return (sd_round_time(t, d, m.gamma, m.concurrency, context)
            / expected_tokens_per_round(dep.acceptance.alpha, m.gamma))


@dataclass(frozen=True)
class EngineFit:
    costs: serving.EngineCosts
    fitted: dict  # field -> value
    residuals: list  # per measurement: predicted / measured - 1
    rms_log_error: float

    def as_json(self) -> dict:
        return {"preset": self.costs.name, "params": self.fitted,
                "rms_log_error": self.rms_log_error, "residuals": self.residuals}


def fit_engine(dep: ResolvedDeployment, measurements: list[Measurement], context: int,
               fields: tuple[str, ...] = DEFAULT_FIELDS) -> EngineFit:
    """Least-squares fit of `fields` of the deployment's engine costs to the measurements."""
    base = dep.engine
    unknown = [f for f in fields if not hasattr(base, f) or isinstance(getattr(base, f), (bool, str, tuple))]
    if unknown:
        raise SpecsimError(f"calibrate-engine: cannot fit {unknown} (numeric EngineCosts fields only)")
    if len(measurements) < len(fields):
        raise SpecsimError(f"calibrate-engine: {len(measurements)} measurement(s) cannot determine "
                           f"{len(fields)} parameters ({', '.join(fields)})")
    measured = np.array([m.tpot_s for m in measurements])
    scale = np.array([max(getattr(base, f), 1e-4) for f in fields])  # fit in units near 1

    def residuals(x):
        costs = replace(base, **{f: float(v * s) for f, v, s in zip(fields, x, scale)})
        pred = np.array([predict_tpot(dep, costs, m, context) for m in measurements])
        return np.log(pred / measured)

    x0 = np.array([getattr(base, f) for f in fields]) / scale
    from scipy.optimize import least_squares  # lazy: only calibrate-engine fits
    sol = least_squares(residuals, x0, bounds=(0.0, np.inf), x_scale="jac")
    fitted = {f: float(v * s) for f, v, s in zip(fields, sol.x, scale)}
    costs = replace(base, **fitted, sources={**base.sources, **{f: "fitted by specsim calibrate-engine"
                                                                for f in fields}})
    r = residuals(sol.x)
    return EngineFit(costs, fitted, [float(math.expm1(v)) for v in r],
                     float(np.sqrt(np.mean(r ** 2))))
