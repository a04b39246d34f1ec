"""`specsim plan` outputs: plan.json, best.yaml, plan.md, the Pareto plot (pareto.png) and summary.html.

plan.json is the contract (byte-identical for the same plan whatever the executor); plan.md adds
the wall time and cache use of the run that wrote it.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from simulator import __version__
from simulator.run.html import write_html
from simulator.run.plan_plots import plan_pareto
from simulator.run.report import clean
from simulator.run.plan import PlanOutcome

def plan_json(result: dict) -> str:
    return json.dumps(clean(result), indent=2) + "\n"


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(result: dict, plan_path: str, wall_s: float | None, simulated: int | None) -> str:
    r, best = result, result["best"]
    slo = ", ".join(f"{k} <= {v:g}" for k, v in r["slo"].items())
    out = [f"# specsim plan: {r['plan']}", "",
           f"Plan `{plan_path}`, seed {r['seed']}: load {r['load']:g} req/s, SLO {slo}, objective "
           f"{r['objective']}, budget {r['budget']['max_gpus'] or 'none'} GPUs.", ""]
    if best:
        out += [f"**Answer: {best['name']}**: {best['replicas']} x {best['gpu']} tp {best['tp']} "
                f"({best['strategy']}{', draft ' + best['draft'] if best['draft'] else ''}"
                f"{', gamma ' + str(best['gamma']) if best['gamma'] else ''}), {best['gpus']} GPUs, "
                f"${best['cost_per_hour']:.2f}/h, ${_f(best['cost_per_million_tokens'], '.3f')}/Mtok; "
                f"{best['verdict']}. Reproduce with `specsim run {r['scenario']}`.", ""]
    else:
        out += ["**No design meets the SLO at this load within the budget.**", ""]
    run = f"{r['simulations']} simulations"
    if simulated is not None:
        run += f" ({simulated} run, {r['simulations'] - simulated} from the cache)"
    if wall_s is not None:
        run += f" in {wall_s:.0f} s wall"
    out += [f"{r['candidates_enumerated']} candidates, {len(r['rejected'])} rejected, "
            f"{r['candidates_evaluated']} simulated: {run}.", "",
            "| fleet | GPUs | $/h | $/Mtok | capacity req/s/replica | TTFT p99 s | TPOT p99 ms "
            "| worst SLO ratio | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for x in r["ranked"]:
        out.append(f"| {x['name']} | {x['gpus']} | {x['cost_per_hour']:.2f} | "
                   f"{_f(x['cost_per_million_tokens'], '.3f')} | {x['capacity_rate_per_s']:.3g} | "
                   f"{_f(x['ttft_p99_s'], '.3f')} | "
                   f"{_f(None if x['tpot_p99_s'] is None else 1e3 * x['tpot_p99_s'], '.1f')} | "
                   f"{x['worst_slo_ratio']:.2f} | {x['verdict']} |")
    if r["rejected"]:
        out += ["", "## Rejected before or during the search", ""]
        out += [f"- **{x['name']}** ({x['stage']}): {x['reason']}" for x in r["rejected"]]
    m = r["method"]
    out += ["", "## Method", "",
            f"Prune (memory fit by the deployment resolver; mean TPOT at batch 1 above "
            f"{m['prune_margin']:g}x the TPOT bound; analytic decode-throughput bound x the most "
            f"replicas the budget allows below the load), then per design the capacity of one "
            f"replica under the SLO by {m['bisection_steps']} bisection steps on the Poisson rate "
            f"({m['requests_per_simulation']} requests each), replicas = ceil(load / capacity), and "
            f"the whole fleet simulated at the load with the {m['router']} router (at most "
            f"{m['max_extra_replicas']} replicas added or removed). Verdict MLPerf-style: each "
            "bounded percentile over its bound, all <= 1. Every simulation uses the plan's seed "
            "(common random numbers). Latencies: "
            + ", ".join(sorted({x['latency_source'] for x in r['ranked']})) + ".", ""]
    return "\n".join(out)


def write(outcome: PlanOutcome, out_dir: Path, plan_path: str, wall_s: float | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plan.json").write_text(plan_json(outcome.result))
    best = out_dir / "best.yaml"
    if outcome.best_scenario is not None:
        best.write_text(yaml.safe_dump(outcome.best_scenario, sort_keys=False))
    elif best.exists():
        best.unlink()  # a stale winner from an earlier plan would mislead
    (out_dir / "plan.md").write_text(markdown(outcome.result, plan_path, wall_s, outcome.simulated))
    images = plan_pareto(outcome.result, out_dir, stem="pareto", svg=False)
    r = outcome.result
    write_html(out_dir, html_summary(r), images, title=f"specsim plan: {r['plan']} at {r['load']:g} req/s")


def html_summary(result: dict) -> dict:
    """plan.json in the shape summary.html reads (run/html.py): the ranked fleets as design rows,
    their P90/P99 scalars as percentile blocks; the per-fleet probe lists stay in plan.json."""
    rows = []
    for x in result["ranked"]:
        row = {k: v for k, v in x.items()
               if not isinstance(v, (list, dict)) and not k.endswith(("_p90_s", "_p99_s"))}
        for m in ("ttft", "tpot", "e2e"):
            d = {p: x[f"{m}_{p}_s"] for p in ("p90", "p99") if x.get(f"{m}_{p}_s") is not None}
            if d:
                row[f"{m}_s"] = d
        rows.append(row)
    best = result.get("best") or {}
    return {"scenario": result["plan"], "seed": result["seed"], "specsim_version": __version__,
            "slo": result["slo"],
            "deployments": rows, "load_requests_per_s": result["load"],
            "objective": result["objective"], "best": best.get("name", "none meets the SLO")}
