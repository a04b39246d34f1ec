"""Fidelity: the simulator's measured error against a real serving loop (`specsim fidelity`, issue 6).

Steps (run_fidelity):
  1. workload: one closed-loop workload spec (lognormal prompt/output lengths), validated through
     the scenario schema; its requests (simulator.config.workload.generate) are served for real AND
     simulated, so both sides see identical lengths in the same order.
  2. real: `simulator.measure.real_engine.run_real` serves them at each concurrency, AR and SD, on the
     device with one torch thread; acceptance (alpha and the per-position rates) is MEASURED.
  3. profiles of both models on the same device (`specsim profile`'s capture), or reused ones.
  4. host overhead: sampling, the acceptance rule and bookkeeping of one AR step / SD round,
     timed on the device by a micro-benchmark of the real engine's own functions (the forward
     passes are in the profile; this is the rest of a serving step).
  5. simulate: a scenario built as a dict and validated like YAML (closed loop, the measured
     per-position acceptance, the `profile` latency backend, a scheduler configured as the real
     loop schedules: whole prompts ONE per prefill-only step (`max_prefills_per_step: 1`), then
     decode steps of the whole batch); the host overhead is charged per step by its kind and
     batch (HostOverheadLatency): a decode step of b sequences pays the measured AR step / SD
     round at batch b, a prefill step one sampled token per prompt.
  6. compare: throughput, TTFT P50/P99, TPOT mean/P50/P99 and mean tokens per round, real vs
     simulated; the crossover concurrency (where SD stops beating AR) in each; per-iteration
     diagnostics (measured forward time / the time the profile charges for the same batch)
     that say where the error comes from.

Measuring on a shared machine (step 2). The speed of this CPU drifts by tens of percent within
minutes (other tenants). So the real runs of one concurrency are interleaved AR, SD, SD, AR
(`repeats` = 2 gives each mode two runs placed symmetrically in time, cancelling a linear drift)
and the point's real metrics are the median (mean of two) over its runs. Around every run a
short "canary" (fixed target and draft forward passes, `canary`) is timed and divided by what the
profile charges for the same passes: canary ratio 1 = the machine runs at the speed it was
profiled at. A run whose canary moved by more than `max_drift` between before and after is
discarded and run again (once; the rerun is kept whatever its drift). The canary is REPORTED
(per run and per point in fidelity.json, per point in table.md), never used to scale a result.

Pure functions (fidelity/metrics.py, diagnostics.py) are separate from the steps that time
things (microbench.py, canary.py, this module). Everything except the real timings is deterministic given the seed.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from simulator.errors import SpecsimError
from simulator.fidelity.canary import CANARY_SHAPES, Canary, canary_drift
from simulator.fidelity.config import (CPU_GPU, REAL_DRAFT_FIRST_Q, FidelityConfig, acceptance_spec,
                                       scenario_dict, workload_requests)
from simulator.fidelity.diagnostics import dominant_error, iteration_diagnostics, merge_diagnostics
from simulator.fidelity.latency import HostOverheadLatency
from simulator.fidelity.markdown import markdown_table
from simulator.fidelity.metrics import (compare, crossovers, error_summary, interleaved_order,
                                        median_metrics, real_metrics, sim_metrics)
from simulator.fidelity.microbench import measure_host_overhead, overhead_at
from simulator.fidelity.plot import plot
from simulator.fidelity.result import FidelityResult


def _profile_paths(cfg: FidelityConfig, out: Path, log) -> tuple[Path, dict]:
    """Profiles root for the simulation: reused (cfg.profiles_dir) or captured now under out/."""
    from simulator.latency.profiles import find_profile, load_profile, write_profile

    info = {}
    if cfg.reuse_profile:
        root = Path(cfg.profiles_dir)
        for m in (cfg.target, cfg.draft):
            p = find_profile(cfg.gpu_name, m, 1, root)
            if p is None:
                raise SpecsimError(f"--reuse-profile: no profile of {m} under {root}/{cfg.gpu_name}/; "
                                   "drop --reuse-profile to capture one")
            prof = load_profile(p, model=m, tp=1)
            info[m] = {"path": str(p), "captured": prof.meta.date, "device": prof.meta.device.get("name"),
                       "grid": prof.meta.grid.get("name") if isinstance(prof.meta.grid, dict) else None,
                       "reused": True}
        return root.resolve(), info
    from simulator.measure.profiler import CaptureOptions, capture_profile

    root = (out / "profiles").resolve()
    for m in (cfg.target, cfg.draft):
        log(f"profiling {m} on {cfg.device} (grid {cfg.profile_grid}) ...")
        t0 = time.perf_counter()
        prof = capture_profile(CaptureOptions(model=m, tp=1, device=cfg.device, grid=cfg.profile_grid,
                                              device_name=cfg.gpu_name, threads=cfg.threads, seed=cfg.seed,
                                              with_forward=True, with_breakdown=False,
                                              command=f"specsim fidelity (profile of {m})"))
        p = write_profile(prof, root)
        info[m] = {"path": str(p), "captured": prof.meta.date, "device": prof.meta.device.get("name"),
                   "grid": cfg.profile_grid, "reused": False, "wall_s": round(time.perf_counter() - t0, 1)}
    return root, info


def simulate_point(cfg: FidelityConfig, concurrency: int, profiles_root: Path, acceptance: dict,
                   host: dict) -> dict:
    """Simulated metrics of AR and SD at one concurrency: {"ar": metrics, "sd": metrics}.
    `host`: measure_host_overhead's table, charged per step by HostOverheadLatency."""
    from dataclasses import replace

    from simulator.deploy.deployments import resolve
    from simulator.engine.simulation import Simulation
    from simulator.deploy.fit import check_fits
    from simulator.config.loading import parse_scenario
    from simulator.config.workload import generate

    sc = parse_scenario(scenario_dict(cfg, concurrency, profiles_root, acceptance), "<fidelity>")
    req = generate(sc.workload, cfg.seed, Path.cwd())
    out = {}
    for i, d in enumerate(sc.deployments):
        dep = resolve(d, i, Path.cwd())
        check_fits(dep, req, f"deployments[{i}]")
        q_dec = 1 if d.strategy == "ar" else cfg.gamma + 1
        # run_real's draft cache lags two tokens: its first draft step feeds q=2
        dep = replace(dep, target_latency=HostOverheadLatency(dep.target_latency, host, d.name, q_dec),
                      draft_first_q=REAL_DRAFT_FIRST_Q)
        sim = Simulation(dep, req, seed=cfg.seed * 7919 + i)
        rec = sim.run()
        m = sim_metrics(rec)
        m["latency_stats"] = {"target": dep.target_latency.stats,
                              "draft": dep.draft_latency.stats if dep.draft_latency else None}
        out[d.name] = m
    return out


def _device_info(device: str) -> dict:
    import platform

    import torch
    d = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
         "machine": platform.machine(), "processor": platform.processor() or None}
    if device == "cuda" and torch.cuda.is_available():
        d["name"] = torch.cuda.get_device_name(0)
    else:
        try:
            from simulator.measure.profiler import _device_info as dinfo
            d["name"] = dinfo(torch, torch.device("cpu"))["name"]
        except Exception:  # pragma: no cover - best effort description only
            d["name"] = platform.processor() or "cpu"
    return d


def _real_runs(cfg: FidelityConfig, req, tgt, drf, canary: Canary, log) -> tuple[dict, list]:
    """Every real run, interleaved per concurrency, a canary around each; a run whose canary
    moved more than cfg.max_drift is discarded and run again once. Returns ({(c, mode): [(run,
    metrics, info)]}, discarded runs)."""
    from simulator.measure.real_engine import run_real

    runs, discarded = {}, []
    for c in cfg.concurrency:
        for mode in interleaved_order(cfg.repeats):
            for attempt in (0, 1):
                t0 = time.perf_counter()
                before = canary()
                run = run_real(tgt, drf if mode == "sd" else None, prompt_lens=req.prompt,
                               output_lens=req.output, concurrency=c, mode=mode, gamma=cfg.gamma,
                               temperature=cfg.temperature, seed=cfg.seed)
                after = canary()
                drift = canary_drift(before, after)
                m = real_metrics(run)
                info = {"canary_before": before, "canary_after": after, "drift": drift,
                        "wall_s": round(time.perf_counter() - t0, 1), "attempt": attempt}
                log(f"real {mode} c={c}: {m['throughput']:.1f} tok/s, TPOT {m['tpot_mean'] * 1e3:.1f} ms, "
                    f"canary {before['ratio']:.2f} -> {after['ratio']:.2f} ({info['wall_s']:.0f}s)")
                if attempt == 0 and cfg.max_drift and abs(drift) > cfg.max_drift:
                    log(f"  canary moved {drift * 100:+.0f}% (> {cfg.max_drift * 100:.0f}%): discarded, run again")
                    discarded.append({"mode": mode, "concurrency": int(c), "metrics": m,
                                      **{k: v for k, v in info.items() if k != "attempt"}})
                    continue
                runs.setdefault((c, mode), []).append((run, m, info))
                break
    return runs, discarded


def _points_at(cfg: FidelityConfig, c: int, runs: dict, profiles_root: Path, host: dict,
               tlat, dlat, log) -> list[dict]:
    """One concurrency: simulate AR and SD with the measured acceptance, and diagnose."""
    from simulator.measure.real_engine import acceptance_stats

    sd_runs = [r for r, _, _ in runs[(c, "sd")]]
    acc = acceptance_stats(pd.concat([r.rounds for r in sd_runs], ignore_index=True), cfg.gamma)
    sim = simulate_point(cfg, c, profiles_root, acceptance_spec(acc), host)
    points = []
    for mode in ("ar", "sd"):
        rs = runs[(c, mode)]
        over = (lambda b, mode=mode: overhead_at(host, mode, b))
        diags = [iteration_diagnostics(r, tlat, dlat if mode == "sd" else None, cfg.gamma, over)
                 for r, _, _ in rs]
        stats = sim[mode].pop("latency_stats")
        infos = [i for _, _, i in rs]
        ratios = [x["ratio"] for i in infos for x in (i["canary_before"], i["canary_after"])]
        points.append({"mode": mode, "concurrency": int(c),
                       "alpha": acc["alpha"] if mode == "sd" else None,
                       "per_position": acc["per_position"] if mode == "sd" else None,
                       "real": median_metrics([m for _, m, _ in rs]), "sim": sim[mode],
                       "real_runs": [m for _, m, _ in rs], "runs": infos,
                       "canary": float(np.median(ratios)),
                       "canary_drift": float(max(abs(i["drift"]) for i in infos)),
                       "diagnostics": merge_diagnostics(diags),
                       "host_overhead_s": overhead_at(host, mode, c), "latency_stats": stats})
    log(f"simulated c={c}: AR {sim['ar']['throughput']:.1f}, SD {sim['sd']['throughput']:.1f} tok/s")
    return points


def _drift_summary(cfg: FidelityConfig, points: list[dict], discarded: list) -> dict:
    all_ratios = [x["ratio"] for p in points for i in p["runs"] for x in (i["canary_before"], i["canary_after"])]
    return {"canary_shapes": [list(s_) for s_ in CANARY_SHAPES], "max_drift": cfg.max_drift,
            "ratio_min": float(min(all_ratios)), "ratio_median": float(np.median(all_ratios)),
            "ratio_max": float(max(all_ratios)),
            "max_abs_drift_kept": float(max(p["canary_drift"] for p in points)),
            "discarded_runs": discarded}


def _check_device(cfg: FidelityConfig, torch) -> None:
    from simulator.hardware.models import MODELS

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SpecsimError("--device cuda: torch sees no CUDA GPU on this machine")
    for m in (cfg.target, cfg.draft):
        if m not in MODELS:
            raise SpecsimError(f"unknown model '{m}'")


def run_fidelity(cfg: FidelityConfig, out: Path, log: Callable[[str], None] = lambda s: None,
                 models=None) -> FidelityResult:
    """The whole procedure (see the module docstring). `models`: an optional (target, draft) pair
    of torch models to serve instead of make_pair's (tests)."""
    cfg.check()
    import torch

    from simulator.config.schema import InlineGPU
    from simulator.deploy.deployments import resolve_gpu
    from simulator.hardware.models import MODELS
    from simulator.latency.profile import make_profile_latency
    from simulator.measure.profiler import steady_cpu_allocator
    from simulator.measure.real_engine import make_pair

    _check_device(cfg, torch)
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    allocator = steady_cpu_allocator() if cfg.device == "cpu" else "torch CUDA caching allocator"
    req = workload_requests(cfg)
    log(f"workload: {req.n} requests, prompt mean {req.prompt.mean():.0f}, output mean {req.output.mean():.0f} tokens")

    # ---- profiles first (the simulation needs them; the diagnostics too)
    profiles_root, prof_info = _profile_paths(cfg, out, log)
    gpu = resolve_gpu(InlineGPU(name=cfg.gpu_name, **CPU_GPU), "gpu")
    dtype = "fp32" if cfg.device == "cpu" else "bf16"
    tlat = make_profile_latency(MODELS[cfg.target], gpu, 1, dtype, root=profiles_root)
    dlat = make_profile_latency(MODELS[cfg.draft], gpu, 1, dtype, root=profiles_root)

    # ---- host overhead of a serving step (sampling, acceptance, bookkeeping)
    host = measure_host_overhead(MODELS[cfg.target].vocab, cfg.gamma, cfg.temperature,
                                 sorted(set(cfg.concurrency) | {1}), device=cfg.device, seed=cfg.seed)

    # ---- real runs, then each point simulated with what was measured
    tdtype = torch.float32 if cfg.device == "cpu" else torch.bfloat16
    if models is None:
        tgt, drf = make_pair(cfg.target, cfg.draft, device=cfg.device, dtype=tdtype, seed=cfg.seed,
                             residual_scale=cfg.residual_scale)
    else:
        tgt, drf = models
    canary = Canary(tgt, drf, tlat, dlat, seed=cfg.seed)
    canary()  # warm-up
    runs, discarded = _real_runs(cfg, req, tgt, drf, canary, log)
    points = [p for c in cfg.concurrency
              for p in _points_at(cfg, c, runs, profiles_root, host, tlat, dlat, log)]
    table = compare(points)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    extra = {"device": _device_info(cfg.device), "allocator": allocator, "profiles": prof_info,
             "host_overhead": host, "dominant_error": dominant_error(points),
             "drift": _drift_summary(cfg, points, discarded),
             "workload": {"prompt_tokens": req.prompt.tolist(), "output_tokens": req.output.tolist()},
             "wall_s": round(time.perf_counter() - t_start, 1), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return FidelityResult(config, table, error_summary(table), crossovers(table), points, extra)


def write_outputs(res: FidelityResult, out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "table.md", "csv": out / "table.csv", "png": out / "fidelity.png",
             "json": out / "fidelity.json"}
    paths["md"].write_text(markdown_table(res))
    res.table.to_csv(paths["csv"], index=False, float_format="%.6g")
    plot(res, paths["png"])
    paths["json"].write_text(json.dumps(res.as_json(), indent=1))
    return paths
