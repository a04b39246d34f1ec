"""Plots of a run summary (the summary.json contract) and its per-request table, and of a plan.

`write_plots(summary, requests, outdir)` writes PNG + SVG files and returns their paths:
  sweeps:  sweep_throughput (output tok/s vs the swept value per design, crossover marked),
           sweep_latency (P50/P99 TPOT and P99 TTFT vs the swept value),
           speedup (each design's throughput over its baseline, from summary["crossover"], 1.0 drawn);
  any run: latency_cdf (TTFT and TPOT CDFs per design, from requests.csv),
           busy_breakdown (stacked busy time per design, from busy_breakdown_s).
`plan_pareto(plan, outdir)`: the plan's objective (cost) vs P99 TPOT and vs P99 TTFT, SLO lines,
the best design marked (`specsim plan` writes it as pareto.png).

Log x axes where the swept values are geometric; confidence bands where rows carry `ci`. Legends
name model, GPU, tp, strategy, gamma and latency source (with the measured share). Marks carry
gids, visible as ids in the SVG: "crossover-N" (and "crossover-ci-N"), "ci-band", "overloaded",
"unity" (the 1.0 line), "best" and "slo" (plans). Output is
byte-reproducible: fixed style, no dates or software tags in the files, a fixed SVG hash salt.
"""
from __future__ import annotations

import math
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from simulator.run.console import ci, label, num, pct, source_text, sweep_point

PNG_META = {"Software": None}
SVG_META = {"Date": None, "Creator": None, "Format": None, "Type": None}
RC = {"svg.hashsalt": "specsim", "svg.fonttype": "path", "font.size": 9, "axes.grid": True,
      "grid.alpha": 0.3, "legend.fontsize": 7, "figure.dpi": 100}
MAX_CDF_DESIGNS = 12
MARKERS = "osD^vP*Xh<>"
_WITH_SVG: ContextVar[bool] = ContextVar("specsim_plots_svg", default=True)


# ------------------------------------------------------------------------------- helpers
def design_label(row: dict, rows: list[dict] | None = None) -> str:
    """'sd: sd llama-3.1-8b + llama-3.2-1b g4, h100-sxm tp1, roofline' (what the row is; with
    `rows`, the design's rows over a sweep, a gamma that varies is shown as its range)."""
    c = row.get("config") if isinstance(row.get("config"), dict) else {}
    what = str(c.get("target", ""))
    if c.get("draft"):
        what += f" + {c['draft']}"
        if c.get("draft_placement") == "dedicated":
            what += f" (on {c.get('draft_gpus', '?')}x {c.get('draft_gpu', '?')})"
    gammas = sorted({r["config"]["gamma"] for r in rows or [row] if isinstance(r.get("config"), dict)
                     and num(r["config"].get("gamma")) is not None})
    if gammas:
        what += f" g{gammas[0]}" if len(gammas) == 1 else f" g{gammas[0]}-{gammas[-1]}"
    if c.get("gamma_auto"):
        what += " (auto)"
    where = str(c.get("gpu", ""))
    if c.get("tp") is not None:
        where += f" tp{c['tp']}"
    if num(c.get("replicas")) and c["replicas"] > 1:
        where += f" x{c['replicas']}"
    parts = [p for p in (f"{row.get('strategy', '')} {what}".strip(), where.strip(),
                         source_text(row)) if p]
    return f"{row.get('name', '?')}: " + ", ".join(parts)


def _designs(rows: list[dict]) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(str(r.get("name", "?")), []).append(r)
    return by


def _geometric(xs) -> bool:
    """Positive values spanning >= 8x whose steps are closer to constant ratio than constant
    difference."""
    xs = np.unique(np.asarray([x for x in xs if x is not None], float))
    if len(xs) < 3 or xs[0] <= 0 or xs[-1] / xs[0] < 8:
        return False
    lin, log = np.diff(xs), np.diff(np.log(xs))
    return np.std(log) / np.mean(log) < np.std(lin) / np.mean(lin)


def _new_fig(w: float, h: float, n: int = 1, ncols: int = 1) -> tuple[Figure, list]:
    from matplotlib.figure import Figure  # lazy: matplotlib costs 0.3 s to import
    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(math.ceil(n / ncols), ncols, squeeze=False).ravel().tolist()
    return fig, axes


def _save(fig: Figure, outdir: Path, stem: str) -> list[Path]:
    png, svg = outdir / f"{stem}.png", outdir / f"{stem}.svg"
    fig.savefig(png, dpi=110, metadata=PNG_META)
    if not _WITH_SVG.get():
        return [png]
    fig.savefig(svg, metadata=SVG_META)
    return [png, svg]


def _title(summary: dict, what: str) -> str:
    return f"{summary.get('scenario', '?')}: {what}"


# --------------------------------------------------------------------------------- sweeps
def _series(rows: list[dict], value) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((sweep_point(r)[1], value(r)) for r in rows if sweep_point(r))
    return (np.array([p[0] for p in pts], float),
            np.array([np.nan if p[1] is None else p[1] for p in pts], float))


def _band(ax, rows, keys, scale, color) -> None:
    pts = sorted((sweep_point(r)[1], ci(r, *keys)) for r in rows if sweep_point(r) and ci(r, *keys))
    if len(pts) >= 2:
        ax.fill_between([p[0] for p in pts], [scale * p[1][0] for p in pts],
                        [scale * p[1][1] for p in pts], color=color, alpha=0.2, lw=0, gid="ci-band")


def _mark_crossovers(ax, summary: dict, colors=None) -> int:
    """Vertical line where each design stops paying (interpolated estimate, else the sweep point),
    with its confidence interval shaded when the crossover carries one. `colors(i, crossover)`
    picks each line's colour. Returns the count."""
    n = 0
    for i, c in enumerate(summary.get("crossover") or []):
        x = num(c.get("stops_paying_at_interpolated")) or num(c.get("stops_paying_at"))
        if x is None:
            continue
        ax.axvline(x, color=colors(i, c) if colors else "0.3", ls="--", lw=1.2, gid=f"crossover-{n}",
                   label=f"{c.get('design')} stops paying vs {c.get('baseline')} (~{x:.3g})")
        band = ci(c, "stops_paying_at_interpolated", "stops_paying_at")
        if band:
            ax.axvspan(*band, color="0.5", alpha=0.15, lw=0, gid=f"crossover-ci-{n}")
        n += 1
    return n


def _sweep_axes(ax, param: str, geometric: bool, xs) -> None:
    ax.set_xlabel(param)
    if geometric:
        ax.set_xscale("log", base=2 if all(float(x).is_integer() for x in xs) else 10)
        ax.set_xticks(sorted(set(xs)), [f"{x:g}" for x in sorted(set(xs))])
        ax.minorticks_off()


def _legend_below(fig: Figure, ax) -> None:
    h, lab = ax.get_legend_handles_labels()
    if h:
        fig.legend(h, lab, loc="outside lower center", ncols=1, frameon=False)


# (stem, metric, key, ci keys, scale, y label) of the latency panels
LAT_PANELS = [("TPOT P50", "tpot_s", "p50", ("tpot_s.p50", "tpot_p50_s"), 1e3, "TPOT P50 (ms)"),
              ("TPOT P99", "tpot_s", "p99", ("tpot_s.p99", "tpot_p99_s"), 1e3, "TPOT P99 (ms)"),
              ("TTFT P99", "ttft_s", "p99", ("ttft_s.p99", "ttft_p99_s"), 1, "TTFT P99 (s)")]


def sweep_plots(summary: dict, outdir: Path) -> list[Path]:
    rows = [r for r in summary.get("deployments", []) if sweep_point(r)]
    if not rows:
        return []
    param = sweep_point(rows[0])[0]
    xs = [sweep_point(r)[1] for r in rows]
    geo, by = _geometric(xs), _designs(rows)
    colors = {n: f"C{i % 10}" for i, n in enumerate(by)}
    out = []

    fig, (ax,) = _new_fig(7.5, 5.2)
    for i, (name, rs) in enumerate(by.items()):
        x, y = _series(rs, lambda r: num(r.get("throughput_tokens_per_s")))
        ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], color=colors[name],
                label=design_label(rs[0], rs))
        _band(ax, rs, ("throughput_tokens_per_s",), 1, colors[name])
        _mark_overloaded(ax, rs, lambda r: num(r.get("throughput_tokens_per_s")))
    _mark_crossovers(ax, summary, lambda i, c: colors.get(c.get("design"), "0.3"))
    _sweep_axes(ax, param, geo, xs)
    ax.set_ylabel("output token throughput (tok/s)")
    ax.set_title(_title(summary, f"throughput vs {param}"))
    _legend_below(fig, ax)
    out += _save(fig, outdir, "sweep_throughput")

    fig, axes = _new_fig(12, 4.8, 3, 3)
    for ax, (name_, metric, key, keys, scale, ylab) in zip(axes, LAT_PANELS):
        for i, (name, rs) in enumerate(by.items()):
            x, y = _series(rs, lambda r: pct(r, metric, key))
            ax.plot(x, scale * y, marker=MARKERS[i % len(MARKERS)], color=colors[name],
                    label=design_label(rs[0], rs))
            _band(ax, rs, keys, scale, colors[name])
        _mark_crossovers(ax, summary, lambda i, c: colors.get(c.get("design"), "0.3"))
        _sweep_axes(ax, param, geo, xs)
        ax.set_ylabel(ylab)
        ax.set_title(f"{name_} vs {param}")
    fig.suptitle(_title(summary, "latency"))
    _legend_below(fig, axes[0])
    out += _save(fig, outdir, "sweep_latency")
    return out + speedup_plot(summary, outdir, geo)


def _mark_overloaded(ax, rows, value) -> None:
    pts = [(sweep_point(r)[1], value(r)) for r in rows if r.get("overloaded") is True]
    pts = [p for p in pts if p[1] is not None]
    if pts:
        ax.scatter(*zip(*pts), s=120, facecolors="none", edgecolors="red", lw=1.5, zorder=5, gid="overloaded",
                   label="overloaded (arrivals outpace service)")


def speedup_plot(summary: dict, outdir: Path, geometric: bool | None = None) -> list[Path]:
    cross = [c for c in summary.get("crossover") or [] if c.get("speedup")]
    if not cross:
        return []
    param = cross[0].get("param", "sweep")
    xs = [num(p.get(param)) for c in cross for p in c["speedup"]]
    geometric = _geometric(xs) if geometric is None else geometric
    fig, (ax,) = _new_fig(7.5, 4.8)
    ax.axhline(1.0, color="black", lw=1, label="1.0 = no gain over the baseline", gid="unity")
    for i, c in enumerate(cross):
        pts = sorted((num(p.get(param)), num(p.get("ratio"))) for p in c["speedup"]
                     if num(p.get(param)) is not None)
        x = [p[0] for p in pts]
        ax.plot(x, [np.nan if p[1] is None else p[1] for p in pts], marker=MARKERS[i % len(MARKERS)],
                color=f"C{i % 10}", label=f"{c.get('design')} / {c.get('baseline')}")
        lo_hi = [(num(p.get(param)), num(p.get("lo")), num(p.get("hi"))) for p in c["speedup"]]
        lo_hi = sorted(t for t in lo_hi if None not in t)
        if len(lo_hi) >= 2:
            ax.fill_between(*zip(*lo_hi), color=f"C{i % 10}", alpha=0.2, lw=0, gid="ci-band")
    _mark_crossovers(ax, summary, lambda i, c: f"C{i % 10}")
    _sweep_axes(ax, param, geometric, [x for x in xs if x is not None])
    ax.set_ylabel("throughput over the baseline (x)")
    ax.set_title(_title(summary, f"speculation's throughput gain vs {param}"))
    _legend_below(fig, ax)
    return _save(fig, outdir, "speedup")


# ------------------------------------------------------------------------------- per run
def cdf_plot(summary: dict, requests: pd.DataFrame, outdir: Path) -> list[Path]:
    """TTFT and TPOT CDFs: one line per design (a run), or one panel row per design with a line
    per sweep value (a sweep)."""
    import matplotlib
    if requests is None or len(requests) == 0 or "deployment" not in requests:
        return []
    rows = summary.get("deployments", [])
    by = _designs(rows)

    def describe(name: str) -> str:
        rs = by.get(name) or [{"name": name}]
        return design_label(rs[0], rs)

    names = list(dict.fromkeys(requests["deployment"].astype(str)))
    shown, param = names[:MAX_CDF_DESIGNS], next((p[0] for p in map(sweep_point, rows) if p), None)
    sweep = param is not None and param in requests
    fig, axes = _new_fig(11, 3.2 * (len(shown) if sweep else 1) + 1.2,
                         2 * (len(shown) if sweep else 1), 2)
    for j, name in enumerate(shown):
        sub = requests[requests["deployment"].astype(str) == name]
        pair = axes[2 * j: 2 * j + 2] if sweep else axes[:2]
        groups = sorted(sub.groupby(param), key=lambda t: t[0]) if sweep else [(None, sub)]
        cmap = matplotlib.colormaps["viridis"]
        for k, (v, g) in enumerate(groups):
            color = cmap(0.85 * k / max(1, len(groups) - 1)) if sweep else f"C{j % 10}"
            lab = f"{param}={v:g}" if sweep else describe(name)
            for ax, col, scale in zip(pair, ("ttft_s", "tpot_s"), (1, 1e3)):
                if col in g:
                    _cdf_line(ax, scale * g[col].to_numpy(float), color, lab)
        for ax, (what, unit) in zip(pair, (("TTFT", "s"), ("TPOT", "ms"))):
            _auto_log_x(ax)
            ax.set_xlabel(f"{what} ({unit})")
            ax.set_ylabel("share of requests")
            ax.set_title(f"{what} CDF" + (f": {describe(name)}" if sweep else ""), fontsize=8)
        if sweep and pair[1].get_legend_handles_labels()[0]:
            pair[1].legend(loc="lower right")
    if not sweep:
        _legend_below(fig, axes[0])
    more = f" (first {len(shown)} of {len(names)} designs)" if len(names) > len(shown) else ""
    fig.suptitle(_title(summary, "latency distributions" + more))
    return _save(fig, outdir, "latency_cdf")


def _cdf_line(ax, values: np.ndarray, color, lab: str) -> None:
    v = np.sort(values[np.isfinite(values)])
    if len(v) == 0:
        return
    ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", color=color, label=lab)


def _auto_log_x(ax) -> None:
    """Log x when the plotted values span more than two decades (TTFT under load)."""
    lo, hi = ax.dataLim.x0, ax.dataLim.x1
    if np.isfinite(lo) and lo > 0 and hi / lo > 100:
        ax.set_xscale("log")


def busy_plot(summary: dict, outdir: Path) -> list[Path]:
    """Stacked busy time per design (and sweep point), as a share of the run's duration; target
    components in blues, draft in oranges, anything else in greys."""
    import matplotlib
    rows = [r for r in summary.get("deployments", []) if isinstance(r.get("busy_breakdown_s"), dict)
            and num(r.get("duration_s"))]
    if not rows:
        return []
    keys = list(dict.fromkeys(k for r in rows for k in r["busy_breakdown_s"]))
    fams = {"target": "Blues", "draft": "Oranges"}
    colors = {}
    for fam, cmap in fams.items():
        ks = [k for k in keys if k.startswith(fam)]
        colors.update({k: matplotlib.colormaps[cmap](0.85 - 0.55 * i / max(1, len(ks) - 1))
                       for i, k in enumerate(ks)})
    rest = [k for k in keys if k not in colors]
    colors.update({k: str(0.3 + 0.5 * i / max(1, len(rest))) for i, k in enumerate(rest)})
    fig, (ax,) = _new_fig(8, 1.6 + 0.32 * len(rows))
    y = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    for k in keys:
        w = np.array([(num(r["busy_breakdown_s"].get(k)) or 0.0) / r["duration_s"] for r in rows])
        if w.any():
            ax.barh(y, w, left=left, color=colors[k], label=k.replace("_", " "), height=0.7)
        left += w
    ax.set_yticks(y, [label(r) + (" (overloaded)" if r.get("overloaded") is True else "")
                      for r in rows], fontsize=7)
    ax.set_xlabel("busy time / run time (target and draft streams stacked; >1 when they overlap)")
    ax.set_title(_title(summary, "where the GPU time goes"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return _save(fig, outdir, "busy_breakdown")


def write_plots(summary: dict, requests: pd.DataFrame | None, outdir, svg: bool = True) -> list[Path]:
    """Every plot this summary supports, as PNG (and SVG unless svg=False) in outdir; returns the
    paths."""
    import matplotlib
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    token = _WITH_SVG.set(svg)
    try:
        with matplotlib.rc_context(RC):
            return (sweep_plots(summary, outdir) + cdf_plot(summary, requests, outdir)
                    + busy_plot(summary, outdir))
    finally:
        _WITH_SVG.reset(token)
