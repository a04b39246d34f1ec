"""Results -> files: summary.json, requests.csv, summary.md, the plots and summary.html.

`write` writes a run's report folder; `render` (re)draws summary.md, the plots (run/plots.py) and
summary.html (run/html.py) from a summary and its request table alone, which is what
`specsim report DIR` calls (`rerender`). Console tables live in run/console.py. Every report says
where its numbers come from (latency_source: measured profile, derived (calibrated roofline on
another GPU), roofline (datasheet), or law (SDSL's ideal cost model)).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from simulator.config.sweep import point_label, value_words
from simulator.run import notices
from simulator.errors import SpecsimError
from simulator.user_files import load_user_json
from simulator.run.console import SOURCE_MEANING
from simulator.run.runner import RunResult


def clean(x):
    """JSON-safe: NaN/inf -> null (byte-stable output)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def summary_json(result: RunResult) -> str:
    return json.dumps(clean(result.summary), indent=2) + "\n"


def _label(row: dict) -> str:
    return row["name"] + point_label(row.get("sweep"))


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _design(row: dict) -> str:
    """The row's label, marked when its queue does not keep up (its goodput and $/Mtok are void)."""
    return _label(row) + (" OVERLOADED" if row.get("overloaded") else "")


COLUMNS = [  # (header, getter, format); vLLM bench serve: req/s, output (tok/s) and total tok/s
    ("design", _design, ""),
    ("GPUs", lambda r: r["gpus"], "d"),
    ("req/s", lambda r: r["throughput_requests_per_s"], ".2f"),
    ("tok/s", lambda r: r["throughput_tokens_per_s"], ",.0f"),
    ("total tok/s", lambda r: r.get("throughput_total_tokens_per_s"), ",.0f"),
    ("tok/s/GPU", lambda r: r["throughput_tokens_per_s_per_gpu"], ",.0f"),
    ("TTFT p50 s", lambda r: r["ttft_s"]["p50"], ".3f"),
    ("TTFT p99 s", lambda r: r["ttft_s"]["p99"], ".3f"),
    ("TPOT p50 ms", lambda r: None if r["tpot_s"]["p50"] is None else 1e3 * r["tpot_s"]["p50"], ".1f"),
    ("TPOT p99 ms", lambda r: None if r["tpot_s"]["p99"] is None else 1e3 * r["tpot_s"]["p99"], ".1f"),
    ("tok/round", lambda r: r["mean_tokens_per_round"], ".2f"),
    ("busy", lambda r: r["gpu_busy_fraction"], ".0%"),
    ("$/Mtok", lambda r: r["cost_per_million_tokens"], ".3f"),
    ("goodput req/s", lambda r: r["goodput_requests_per_s"], ".2f"),
    ("latency", lambda r: r["latency_source"], ""),
]


def _crossover_section(s: dict) -> list[str]:
    if not s.get("crossover"):
        return []
    return ["", "## Where speculation stops paying", ""] + [_crossover_line(c) for c in s["crossover"]]


def _design_line(row: dict) -> str:
    c, m = row["config"], row["config"]["memory"]
    spec = f"{c['target']} on {c['replicas']} x {c['tp']} {c['gpu']}"
    if row["strategy"] in ("sd", "ssd"):
        acc = (f"alpha {c['alpha']}" if c["alpha"] is not None
               else f"per-position acceptance {c['per_position']}")
        if c.get("acceptance_sdsl"):
            acc = f"alpha {c['alpha']:.4f} ({_sdsl_source(c['acceptance_sdsl'])})"
        where = "colocated"
        if c.get("draft_placement") == "dedicated":
            where = (f"dedicated {c['draft_gpus']} x {c['draft_gpu']}, handshake "
                     f"{1e6 * c['handshake_fixed_s']:.0f} us + {c['handshake_bytes_per_seq'] / 1e6:.2f} MB/seq")
        gamma = "auto (see Lookahead)" if c.get("gamma_auto") else c["gamma"]
        spec += f", draft {c['draft']} ({where}), gamma {gamma}, {acc}"
    if row["strategy"] == "ssd":
        x = c["ssd"]
        spec += (f"; SSD fan-out {x['fanout']['policy']} {row.get('ssd_fanout')}, r {x['r']:g}, "
                 f"{x['batch_policy']}, {x['backup']} backup"
                 + (f" (fast above batch {x['backup_batch_threshold']})"
                    if x["backup_batch_threshold"] else ""))
    return (f"- **{row['name']}** ({row['strategy']}): {spec}; KV cache "
            f"{m['kv_capacity_tokens']:,} tokens per replica ({m['kv_budget_gb']:.1f} GB/GPU "
            f"after {m['target_weights_gb'] + m['draft_weights_gb']:.1f} GB weights); "
            f"${c['price_per_gpu_hour']}/GPU-hour; latency: {row['latency_source']}.")


def _ssd_section(s: dict) -> list[str]:
    ssd = [r for r in s["deployments"] if r["strategy"] == "ssd"]
    if not ssd:
        return []
    out = ["", "## SSD pre-speculation", "",
           "| design | cache hit (per sequence-round) | model hit | rounds using the cache "
           "| draft GPU busy |", "|---|---|---|---|---|"]
    return out + [f"| {_label(r)} | {_fmt(r['cache_hit_rate'], '.1%')} | "
                  f"{_fmt(r['ssd_model_hit_rate'], '.1%')} | {_fmt(r['batch_hit_rate'], '.1%')} | "
                  f"{_fmt(r['draft_gpu_busy_fraction'], '.0%')} |" for r in ssd]


def _sources_section(s: dict) -> list[str]:
    out = ["", "## Where the numbers come from", ""]
    used = sorted({src for r in s["deployments"] for src in r["latency_source"].split("+")})
    out += [f"- **{u}**: {SOURCE_MEANING.get(u, u)}." for u in used]
    notes = sorted({f"{r['config'][role]} on {r['config']['gpu']}: {note}"
                    for r in s["deployments"] for role, note in r["latency_notes"].items() if note})
    out += [f"  - {n}" for n in notes]
    return out + ["- Acceptance: sampled per round and per sequence from the stated alpha (Leviathan et al.'s"
                  " truncated geometric law) or per-position rates; never a fixed mean.",
                  "- Prices are dated scenario inputs (catalogue defaults: November 2026 on-demand list "
                  "prices), not constants.", ""]


def markdown(result: RunResult | dict, scenario_path: str) -> str:
    """summary.md from a run (or its summary dict)."""
    s = result.summary if isinstance(result, RunResult) else result
    out = [f"# specsim report: {s['scenario']}", "",
           f"Scenario `{scenario_path}`, seed {s['seed']}, specsim {s['specsim_version']}.", ""]
    notes = [f"- **warning**: {w}" for w in notices.warnings(s)] + [f"- note: {n}" for n in notices.trace_notes(s)]
    out += notes + ([""] if notes else []) + [
           "| " + " | ".join(h for h, _, _ in COLUMNS) + " |",
           "|" + "---|" * len(COLUMNS)]
    for row in s["deployments"]:
        out.append("| " + " | ".join(_fmt(g(row), f) if f else str(g(row)) for _, g, f in COLUMNS) + " |")
    out += _overload_section(s) + _steady_section(s) + _crossover_section(s)
    out += _latency_section(s)
    out += ["", "## Designs", ""]
    seen = set()
    for row in s["deployments"]:
        if row["name"] not in seen:
            seen.add(row["name"])
            out.append(_design_line(row))
    out += _gamma_section(s) + _sdsl_section(s) + _ssd_section(s) + _sources_section(s)
    return "\n".join(out)


def _overload_section(s: dict) -> list[str]:
    rows = [r for r in s["deployments"] if r.get("overloaded")]
    if not rows:
        return []
    out = ["", "**OVERLOADED**: completions do not keep up with arrivals, so these rows' figures "
           "grow with run length; their goodput and $/Mtok are withheld (raw values in summary.json "
           "under `overload`).", ""]
    return out + [f"- {_label(r)}: {r['overload']['reason']}." for r in rows]


def _ci_text(c: dict | None, spec: str) -> str:
    return "" if not c or c.get("lo") is None else f" [{c['lo']:{spec}}, {c['hi']:{spec}}]"


def _steady_section(s: dict) -> list[str]:
    rows = [r for r in s["deployments"] if "window" in r]
    if not rows:
        return []
    n = s.get("replications", 1)
    ci_note = f"; [95% CI over {n} replications]" if n > 1 else ""
    out = ["", "## Steady state", "",
           f"Measured in each run's steady window (ramp-up and drain removed{ci_note}); batch: "
           "sequences per step, time-weighted; KV capacity in requests at the workload's mean "
           "prompt + output length.", "",
           "| design | window (s) | tok/s | TTFT p99 s | TPOT p50 ms | batch p50 / p99 | "
           "KV capacity (requests) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        w, st, b, c = r["window"], r.get("steady") or {}, r["batch"]["seqs"], r.get("ci") or {}
        tpot = (st.get("tpot_s") or {}).get("p50")
        out.append(
            f"| {_design(r)} | {w['t0']:.1f}-{w['t1']:.1f} ({w['kind']}) | "
            f"{_fmt(st.get('throughput_tokens_per_s'), ',.0f')}"
            f"{_ci_text(c.get('throughput_tokens_per_s'), ',.0f')} | "
            f"{_fmt((st.get('ttft_s') or {}).get('p99'), '.3f')}"
            f"{_ci_text((c.get('ttft_s') or {}).get('p99'), '.3f')} | "
            f"{_fmt(None if tpot is None else 1e3 * tpot, '.1f')} | "
            f"{_fmt(b['p50'], '.0f')} / {_fmt(b['p99'], '.0f')} | "
            f"{_fmt(r['kv_capacity_requests'], ',.0f')} |")
    return out


def _crossover_line(c: dict) -> str:
    """One design's crossover: ratios with their intervals, where it stops paying, and whether that
    is significant (the ratio's intervals leave no doubt at the crossing)."""
    param = c["param"]
    pts = ", ".join(f"{p[param]:g}: {p['ratio']:.2f}x" + _ci_text(p.get("ci"), ".2f")
                    for p in c["speedup"])
    where = "not within the sweep"
    if c["stops_paying_at"] is not None:
        where = (f"at {param} = {c['stops_paying_at']:g} (interpolated "
                 f"{_fmt(c['stops_paying_at_interpolated'], '.1f')})")
    ci = c.get("stops_paying_ci")
    if ci and c.get("significant") is not None:
        hi = "beyond the sweep" if ci["hi"] is None else f"{ci['hi']:g}"
        lo = "-" if ci["lo"] is None else f"{ci['lo']:g}"
        where += f", 95% CI [{lo}, {hi}]"
        if not c["significant"]:
            strad = ", ".join(f"{x:g}" for x in ci["straddles"])
            where += (" — not significant (the ratio's interval contains 1 at "
                      f"{param} {strad})" if strad else " — not significant")
    basis = {p["basis"] for p in c["speedup"] if "basis" in p}
    note = f" Throughput basis: {', '.join(sorted(basis))}." if basis else ""
    return (f"- **{c['design']}** vs {c['baseline']}: throughput ratio by {param}: {pts}. "
            f"Stops paying {where}.{note}")


def _latency_section(s: dict) -> list[str]:
    """vLLM bench-serve's latency block: mean, median and the run's percentiles (P90/P99/P99.9
    unless `--percentiles` chose more) of TTFT, TPOT, ITL, E2E (ms)."""
    pcts = s.get("percentiles") or [50, 90, 99, 99.9]
    stats = [("mean", "mean")] + [("median" if p == 50 else f"P{p:g}", "p" + f"{p:g}".replace(".", ""))
                                  for p in pcts]
    metrics = (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("ITL", "itl_s"), ("E2E", "e2e_s"))
    heads = [f"{n} {h}" for n, _ in metrics for h, _ in stats]
    out = ["", f"## Latency (ms; percentiles {', '.join(f'{p:g}' for p in pcts)})", "",
           "| design | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for r in s["deployments"]:
        cells = [_fmt(None if (r.get(m) or {}).get(k) is None else 1e3 * r[m][k], ".1f")
                 for _, m in metrics for _, k in stats]
        out.append(f"| {_label(r)} | " + " | ".join(cells) + " |")
    return out


def _params(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _sdsl_source(a: dict) -> str:
    """How an SDSL-derived alpha was obtained, in words."""
    if a["form"] == "sizes":
        src = (f"SDSL law from sizes: ppl law {a['ppl_law']}, D = {a['training_tokens']:.3g} tokens, "
               f"draft ppl {a['draft_ppl']:.3f}, target ppl {a['target_ppl']:.3f}")
    else:
        src = f"SDSL law from draft ppl {a['draft_ppl']:g}, target ppl {a['target_ppl']:g}"
    if a["variant"] != "alpha":
        sign = "-" if a["variant"] == "alpha-" else "+"
        src += f"; band end: law mean {a['alpha_law_mean']:.4f} {sign} RMSE {a['alpha_law']['rmse']:.4f}"
    return src


def _gamma_section(s: dict) -> list[str]:
    rows = [r for r in s["deployments"] if r.get("gamma_choice")]
    if not rows:
        return []
    out = ["", "## Lookahead (gamma: auto)", ""]
    out += [f"- **{_label(r)}**: gamma {r['gamma_choice']['gamma']}: {r['gamma_choice']['reason']}."
            for r in rows]
    return out


def _sdsl_section(s: dict) -> list[str]:
    groups = s.get("sdsl") or []
    if not groups:
        return []
    out = ["", "## SDSL: acceptance from the law, and the optimal draft size", ""]
    for g in groups:
        at = "".join(f" at {k} = {value_words(v)}" for k, v in g.get("sweep", {}).items())
        drafts = g["drafts"]
        best, near = g["best_by_throughput"], g["nearest_to_n_star"]
        size = {d["design"]: d["draft_params"] for d in drafts}
        out += [f"**{g['target']}** ({_params(g['target_params'])}) on {g['tp']} x {g['gpu']}, "
                f"{g['latency_source']} latencies{at}: the law's optimal draft size is N* = mu*M + M0 = "
                f"{_params(g['n_star_params'])} (numerical optimum over the laws at D = "
                f"{g['n_star_training_tokens']:.3g}, {g['n_star_ppl_law']}: "
                f"{_params(g['n_star_optimizer_params'])}). Highest simulated throughput: **{best}** "
                f"({_params(size[best])}); the simulated draft nearest N* is {near} "
                f"({_params(size[near])}).", "",
                "| design | draft | size | alpha | gamma | tok/s | vs best |",
                "|---|---|---|---|---|---|---|"]
        top = max(d["throughput_tokens_per_s"] for d in drafts if d["variant"] == "alpha")
        out += [f"| {d['design']} | {d['draft']} | {_params(d['draft_params'])} | {d['alpha']:.4f} | "
                f"{d['gamma']} | {d['throughput_tokens_per_s']:,.0f} | "
                f"{d['throughput_tokens_per_s'] / top:.2f}x |" for d in drafts]
        out.append("")
    band = [r for r in s["deployments"] if r.get("variant_of")]
    if band:
        rmse = band[0]["config"]["acceptance_sdsl"]["alpha_law"]["rmse"]
        out += [f"Uncertainty band (alpha -/+ the law's RMSE, {rmse:.4f}): throughput at each end.",
                "", "| design | alpha- | alpha | alpha+ |", "|---|---|---|---|"]
        cells: dict[str, dict] = {}
        for r in band:
            key = r["variant_of"] + point_label(r.get("sweep"))
            a = r["config"]["acceptance_sdsl"]
            cells.setdefault(key, {})[a["variant"]] = (
                f"{r['throughput_tokens_per_s']:,.0f} tok/s (alpha {a['alpha']:.3f}, "
                f"gamma {r['config']['gamma']})")
        out += [f"| {k} | " + " | ".join(v.get(x, "-") for x in ("alpha-", "alpha", "alpha+")) + " |"
                for k, v in cells.items()]
        out.append("")
    return out


def render(summary: dict, requests: pd.DataFrame | None, out_dir: Path, scenario_path: str,
           svg: bool = True) -> list[Path]:
    """summary.md, the plots (PNG, and SVG unless svg=False) and summary.html in out_dir; returns
    the plot paths. Needs only the summary (and the request table for the CDFs)."""
    from simulator.run import html, plots
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text(markdown(summary, scenario_path))
    images = plots.write_plots(summary, requests, out_dir, svg=svg)
    html.write_html(out_dir, summary, images)
    return images


def write(result: RunResult, out_dir: Path, scenario_path: str, svg: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(summary_json(result))
    result.requests.to_csv(out_dir / "requests.csv", index=False, float_format="%.9g")
    # Draw from the file as written, so that `specsim report DIR` redraws the same bytes.
    return render(result.summary, pd.read_csv(out_dir / "requests.csv"), out_dir, scenario_path, svg)


def rerender(out_dir: Path, svg: bool = True) -> list[Path]:
    """Re-render a report folder from its summary.json (+ requests.csv when present) without
    re-simulating: what `specsim report DIR` does."""
    path = out_dir / "summary.json"
    if not path.is_file():
        raise SpecsimError(f"{out_dir}: no summary.json in this folder (is it a `specsim run` report?)")
    summary = load_user_json(path, "summary.json")
    if not isinstance(summary, dict) or not isinstance(summary.get("deployments"), list):
        raise SpecsimError(f"{path}: deployments: expected the list of design rows of a run summary")
    csv = out_dir / "requests.csv"
    requests = pd.read_csv(csv) if csv.is_file() else None
    return render(summary, requests, out_dir, _scenario_named(out_dir) or str(path))


def _scenario_named(out_dir: Path) -> str | None:
    """The scenario file an earlier summary.md names (summary.json does not record the path it was
    run from, so that the JSON stays byte-identical however the scenario is spelled)."""
    md = out_dir / "summary.md"
    m = re.search(r"^Scenario `([^`]+)`", md.read_text(), re.M) if md.is_file() else None
    return m.group(1) if m else None
