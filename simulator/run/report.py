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

from simulator.errors import SpecsimError
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
    if "sweep" in row:
        (k, v), = row["sweep"].items()
        return f"{row['name']} @{k}={v:g}"
    return row["name"]


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


COLUMNS = [  # (header, getter, format); vLLM bench serve: req/s, output (tok/s) and total tok/s
    ("design", _label, ""),
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


def markdown(result: RunResult | dict, scenario_path: str) -> str:
    """summary.md from a run (or its summary dict)."""
    s = result.summary if isinstance(result, RunResult) else result
    out = [f"# specsim report: {s['scenario']}", "",
           f"Scenario `{scenario_path}`, seed {s['seed']}, specsim {s['specsim_version']}.", "",
           "| " + " | ".join(h for h, _, _ in COLUMNS) + " |",
           "|" + "---|" * len(COLUMNS)]
    for row in s["deployments"]:
        out.append("| " + " | ".join(_fmt(g(row), f) if f else str(g(row)) for _, g, f in COLUMNS) + " |")
    if s.get("crossover"):
        out += ["", "## Where speculation stops paying", ""]
        for c in s["crossover"]:
            pts = ", ".join(f"{p[c['param']]:g}: {p['ratio']:.2f}x" for p in c["speedup"])
            where = (f"at {c['param']} = {c['stops_paying_at']:g} (interpolated "
                     f"{_fmt(c['stops_paying_at_interpolated'], '.1f')})"
                     if c["stops_paying_at"] is not None else "not within the sweep")
            out.append(f"- **{c['design']}** vs {c['baseline']}: throughput ratio by {c['param']}: "
                       f"{pts}. Stops paying {where}.")
    out += _latency_section(s)
    out += ["", "## Designs", ""]
    seen = set()
    for row in s["deployments"]:
        if row["name"] in seen:
            continue
        seen.add(row["name"])
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
        out.append(f"- **{row['name']}** ({row['strategy']}): {spec}; KV cache "
                   f"{m['kv_capacity_tokens']:,} tokens per replica ({m['kv_budget_gb']:.1f} GB/GPU "
                   f"after {m['target_weights_gb'] + m['draft_weights_gb']:.1f} GB weights); "
                   f"${c['price_per_gpu_hour']}/GPU-hour; latency: {row['latency_source']}.")
    out += _gamma_section(s) + _sdsl_section(s)
    ssd = [r for r in s["deployments"] if r["strategy"] == "ssd"]
    if ssd:
        out += ["", "## SSD pre-speculation", "",
                "| design | cache hit (per sequence-round) | model hit | rounds using the cache "
                "| draft GPU busy |", "|---|---|---|---|---|"]
        out += [f"| {_label(r)} | {_fmt(r['cache_hit_rate'], '.1%')} | "
                f"{_fmt(r['ssd_model_hit_rate'], '.1%')} | {_fmt(r['batch_hit_rate'], '.1%')} | "
                f"{_fmt(r['draft_gpu_busy_fraction'], '.0%')} |" for r in ssd]
    out += ["", "## Where the numbers come from", ""]
    used = sorted({src for r in s["deployments"] for src in r["latency_source"].split("+")})
    out += [f"- **{u}**: {SOURCE_MEANING.get(u, u)}." for u in used]
    notes = sorted({f"{r['config'][role]} on {r['config']['gpu']}: {note}"
                    for r in s["deployments"] for role, note in r["latency_notes"].items() if note})
    out += [f"  - {n}" for n in notes]
    out += ["- Acceptance: sampled per round and per sequence from the stated alpha (Leviathan et al.'s"
            " truncated geometric law) or per-position rates; never a fixed mean.",
            "- Prices are dated scenario inputs (catalogue defaults: November 2026 on-demand list "
            "prices), not constants.", ""]
    return "\n".join(out)


def _latency_section(s: dict) -> list[str]:
    """vLLM bench-serve's latency block: mean, median and P90/P99/P99.9 of TTFT, TPOT, ITL, E2E (ms)."""
    stats = (("mean", "mean"), ("median", "p50"), ("P90", "p90"), ("P99", "p99"), ("P99.9", "p999"))
    metrics = (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("ITL", "itl_s"), ("E2E", "e2e_s"))
    heads = [f"{n} {h}" for n, _ in metrics for h, _ in stats]
    out = ["", "## Latency (ms; percentiles 50, 90, 99, 99.9)", "",
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
        at = "".join(f" at {k} = {v:g}" for k, v in g.get("sweep", {}).items())
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
            key = r["variant_of"] + "".join(f" @{k}={v:g}" for k, v in r.get("sweep", {}).items())
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
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SpecsimError(f"{path}: not valid JSON: {e}") from None
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
