"""`specsim plan` outputs: plan.json, best.yaml, plan.md and the Pareto plot (pareto.png).

plan.json is the contract (byte-identical for the same plan whatever the executor); plan.md adds
the wall time and cache use of the run that wrote it.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from simulator.run.report import clean
from simulator.run.plan import PlanOutcome

OBJECTIVE_LABEL = {"cost_per_million_tokens": "$ per million output tokens",
                   "cost_per_hour": "$ per hour", "gpus": "GPUs"}


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


def pareto_png(result: dict, path: Path) -> None:
    """Cost (the objective) vs P99 TPOT and vs P99 TTFT per ranked fleet; SLO bounds dashed; the
    best starred; the Pareto front (no fleet both cheaper and faster) joined."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [x for x in result["ranked"] if x[result["objective"]] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, scale, unit in ((axes[0], "tpot_p99_s", 1e3, "P99 TPOT (ms)"),
                                 (axes[1], "ttft_p99_s", 1.0, "P99 TTFT (s)")):
        pts = [(x[key] * scale, x[result["objective"]], x) for x in rows if x[key] is not None]
        for ok, style in ((True, dict(c="tab:blue", label="meets the SLO")),
                          (False, dict(facecolors="none", edgecolors="tab:red", label="misses it"))):
            sel = [(a, b) for a, b, x in pts if x["meets_slo"] == ok]
            if sel:
                ax.scatter(*zip(*sel), s=28, **style)
        front, low = [], float("inf")
        for a, b, _ in sorted(pts, key=lambda p: (p[0], p[1])):
            if b < low:
                front.append((a, b))
                low = b
        if len(front) > 1:
            ax.plot(*zip(*front), c="grey", lw=0.8, label="Pareto front")
        if key in result["slo"]:
            ax.axvline(result["slo"][key] * scale, ls="--", c="k", lw=0.8, label="SLO")
        best = result["best"]
        if best and best[key] is not None:
            ax.scatter([best[key] * scale], [best[result["objective"]]], marker="*", s=220,
                       c="gold", edgecolors="k", zorder=5, label=f"best: {best['name']}")
        ax.set_xlabel(unit)
        ax.set_ylabel(OBJECTIVE_LABEL[result["objective"]])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"specsim plan {result['plan']}: {result['load']:g} req/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": "specsim"})
    plt.close(fig)


def write(outcome: PlanOutcome, out_dir: Path, plan_path: str, wall_s: float | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plan.json").write_text(plan_json(outcome.result))
    best = out_dir / "best.yaml"
    if outcome.best_scenario is not None:
        best.write_text(yaml.safe_dump(outcome.best_scenario, sort_keys=False))
    elif best.exists():
        best.unlink()  # a stale winner from an earlier plan would mislead
    (out_dir / "plan.md").write_text(markdown(outcome.result, plan_path, wall_s, outcome.simulated))
    pareto_png(outcome.result, out_dir / "pareto.png")
