"""The plan's Pareto figure (`specsim plan`): its objective against P99 TPOT and TTFT, the SLO
limits, the designs meeting the SLO filled, the Pareto front joined, the best starred. Shares
the look of simulator/run/plots.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

from simulator.run.console import num
from simulator.run.plots import RC, _WITH_SVG, _legend_below, _new_fig, _save

OBJECTIVE_LABEL = {"cost_per_million_tokens": "cost ($ per million output tokens)",
                   "cost_per_hour": "cost ($ per hour)", "gpus": "GPUs"}


def plan_pareto(plan, outdir, stem: str = "plan_pareto", svg: bool = True) -> list[Path]:
    """plan (dict or a plan.json path): the plan's objective (default cost per million tokens) vs
    P99 TPOT and vs P99 TTFT, the SLO limits drawn, designs meeting the SLO filled, the Pareto
    front joined, best starred. Written as outdir/<stem>.png (and .svg unless svg=False)."""
    import matplotlib
    if not isinstance(plan, dict):
        plan = json.loads(Path(plan).read_text())
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cost = plan.get("objective") or "cost_per_million_tokens"
    ranked = [r for r in plan.get("ranked") or [] if num(r.get(cost)) is not None]
    if not ranked:
        return []
    slo = plan.get("slo") or {}
    best = (plan.get("best") or {}).get("name")
    token = _WITH_SVG.set(svg)
    try:
        with matplotlib.rc_context(RC):
            fig, axes = _new_fig(11, 4.8, 2, 2)
            for ax, key, scale, unit in zip(axes, ("tpot_p99_s", "ttft_p99_s"), (1e3, 1), ("ms", "s")):
                _pareto_panel(ax, ranked, key, scale, best, cost)
                lim = num(slo.get(key, slo.get(key.replace("_p99", ""))))
                if lim is not None:
                    ax.axvline(scale * lim, color="red", ls=":", lw=1.2, gid="slo",
                               label="SLO limit (P99)")
                    ax.annotate(f"SLO {scale * lim:g} {unit}", (scale * lim, 1), xytext=(3, -12),
                                xycoords=("data", "axes fraction"), textcoords="offset points",
                                color="red", fontsize=7)
                ax.set_xlabel(f"{key[:4].upper()} P99 ({unit})")
                ax.set_ylabel(OBJECTIVE_LABEL.get(cost, cost))
            _legend_below(fig, axes[0])
            name = plan.get("plan") or plan.get("scenario", "plan")
            load = f" at {plan['load']:g} req/s" if num(plan.get("load")) is not None else ""
            fig.suptitle(f"{name}{load}: {OBJECTIVE_LABEL.get(cost, cost).split(' (')[0]} vs tail "
                         "latency (filled: meets the SLO; line: Pareto front)")
            return _save(fig, outdir, stem)
    finally:
        _WITH_SVG.reset(token)


def _pareto_panel(ax, ranked: list[dict], key: str, scale: float, best: str | None,
                  cost: str = "cost_per_million_tokens") -> None:
    pts = [(scale * num(r.get(key)), num(r[cost]), r) for r in ranked
           if num(r.get(key)) is not None]
    for ok, face in ((True, "C0"), (False, "none")):
        sel = [p for p in pts if bool(p[2].get("meets_slo")) is ok]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], facecolors=face, edgecolors="C0",
                       label="meets SLO" if ok else "misses SLO", zorder=3)
    front, low = [], math.inf
    for x, y, r in sorted(pts, key=lambda p: (p[0], p[1])):
        if y < low:
            front.append((x, y, r))
            low = y
    ax.plot([p[0] for p in front], [p[1] for p in front], color="0.4", lw=1, zorder=2)
    ax.margins(x=0.12, y=0.08)
    for x, y, r in pts:
        if r.get("name") == best or len(pts) <= 12 or (x, y, r) in front:
            ax.annotate(str(r.get("name")), (x, y), xytext=(8, 6), textcoords="offset points",
                        fontsize=7)
        if r.get("name") == best:
            ax.scatter([x], [y], marker="*", s=260, color="gold", edgecolors="black", zorder=4,
                       label=f"best: {best}", gid="best")
