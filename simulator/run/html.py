"""One self-contained summary.html per report: tables, plots, SLO verdicts, the crossover and the
provenance of every number, from the summary dict (the summary.json contract) alone.

Images are embedded as base64 data URIs; the CSS is inline; there are no scripts and no network
references, so the file opens offline. Every string that comes from the summary is escaped.
Keys the contract may gain later are shown when present: per-row scalars the tables do not name
go to the "Other metrics" table, unknown top-level sections to "Other data".
"""
from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from simulator.run import notices
from simulator.run.console import (PARAM_SHORT, SOURCE_MEANING, ci, fmt, label, measured_share, num,
                                   overloaded, pct, slo_of, slo_verdict, total_token_throughput)

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1250px;
color:#1d1d1f;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:12.5px}
th,td{border:1px solid #d5d5d5;padding:3px 7px}th{background:#f3f4f6;text-align:center}
td.n{text-align:right;font-variant-numeric:tabular-nums}td.t{text-align:left}
tr.over td{background:#fde8e8}.badge{background:#c62828;color:#fff;border-radius:3px;
padding:0 4px;font-size:11px;margin-left:4px}.miss{color:#c62828;font-weight:600}.ok{color:#2e7d32}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:12px}
.meta{color:#555}.scroll{overflow-x:auto}td.d{white-space:nowrap}pre{background:#f6f8fa;padding:.6em;overflow:auto;font-size:12px}
"""
# (header, getter, format, key of its confidence interval in row["ci"]): vLLM bench-serve vocabulary
THROUGHPUT = [
    ("GPUs", lambda r: r.get("gpus"), ".0f", None),
    ("completed requests", lambda r: r.get("requests_completed"), ",.0f", None),
    ("duration (s)", lambda r: r.get("duration_s"), ",.1f", None),
    ("request throughput (req/s)", lambda r: r.get("throughput_requests_per_s"), ".3f",
     "throughput_requests_per_s"),
    ("output token throughput (tok/s)", lambda r: r.get("throughput_tokens_per_s"), ",.1f",
     "throughput_tokens_per_s"),
    ("total token throughput (tok/s)", total_token_throughput, ",.1f", "throughput_total_tokens_per_s"),
    ("output tok/s per GPU", lambda r: r.get("throughput_tokens_per_s_per_gpu"), ",.1f", None),
    ("cost ($/Mtok)", lambda r: r.get("cost_per_million_tokens"), ".3f", "cost_per_million_tokens"),
    ("goodput (req/s)", lambda r: r.get("goodput_requests_per_s"), ".3f", "goodput_requests_per_s"),
]
LATENCY = [("TTFT", "ttft_s", "Time to first token", "ms", 1e3),
           ("TPOT", "tpot_s", "Time per output token (excl. first)", "ms", 1e3),
           ("ITL", "itl_s", "Inter-token latency", "ms", 1e3),
           ("E2E", "e2e_s", "End-to-end request latency", "s", 1)]
PCT_NAME = {"mean": "mean", "p50": "median", "p90": "P90", "p99": "P99", "p999": "P99.9"}
SHOWN = ({"name", "strategy", "sweep", "config", "latency_source", "latency_notes", "latency_stats",
          "busy_breakdown_s", "ci", "overloaded", "meets_slo", "gpus", "requests_completed",
          "duration_s", "throughput_requests_per_s", "throughput_tokens_per_s",
          "throughput_tokens_per_s_per_gpu", "cost_per_million_tokens", "goodput_requests_per_s",
          "throughput_total_tokens_per_s", "total_token_throughput", "total_tokens_per_s"}
         | {k for _, k, *_ in LATENCY})
TOP_SHOWN = {"scenario", "seed", "specsim_version", "deployments", "crossover", "slo", "title", "trace_cycles"}


def _td(text: str, numeric: bool = True, cls: str = "") -> str:
    c = ("n" if numeric else "t") + (f" {cls}" if cls else "")
    return f'<td class="{c}">{text}</td>'


def _design_cell(r: dict) -> str:
    badge = '<span class="badge">OVERLOADED</span>' if overloaded(r) else ""
    return f'<td class="t d"><b>{escape(label(r))}</b>{badge}</td>'


def _tr(r: dict, cells: list[str]) -> str:
    return f'<tr{" class=over" if overloaded(r) else ""}>' + _design_cell(r) + "".join(cells) + "</tr>"


def _table(headers: list[str], body: list[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return (f'<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            "</tbody></table></div>")


def _ci_text(r: dict, *keys: str, spec: str = ".4g", scale: float = 1) -> str:
    band = ci(r, *keys)
    return "" if band is None else f" [{scale * band[0]:{spec}}, {scale * band[1]:{spec}}]"


def throughput_table(summary: dict, rows: list[dict]) -> str:
    body = []
    for r in rows:
        cells = [_td(escape(fmt(g(r), f) + (_ci_text(r, k, spec=f) if k else "")))
                 for _, g, f, k in THROUGHPUT]
        verdict, ok = slo_verdict(summary, r)
        cls = "miss" if ok is False else ("ok" if ok else "")
        cells.append(_td(escape(verdict), numeric=False, cls=cls))
        body.append(_tr(r, cells))
    return _table(["design"] + [h for h, *_ in THROUGHPUT] + ["SLO verdict"], body)


def latency_tables(rows: list[dict]) -> str:
    out = []
    for short, key, title, unit, scale in LATENCY:
        stats = [k for k in PCT_NAME if any(pct(r, key, k) is not None for r in rows)]
        extra = sorted({k for r in rows if isinstance(r.get(key), dict) for k in r[key]} - set(PCT_NAME))
        cols = stats + extra
        if not cols:
            continue
        spec = ".2f" if unit == "ms" else ".3f"
        body = [_tr(r, [_td(escape(fmt(pct(r, key, k), spec, scale))
                            + escape(_ci_text(r, f"{key}.{k}", spec=spec, scale=scale))) for k in cols])
                for r in rows]
        out.append(f"<h3>{escape(title)} ({short}, {unit})</h3>"
                   + _table(["design"] + [f"{PCT_NAME.get(k, k)} {short}" for k in cols], body))
    return "".join(out)


def other_metrics_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in SHOWN))
    if not keys:
        return ""

    def cell(v) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:,.4g}"
        if isinstance(v, (dict, list)):
            return escape(json.dumps(v, sort_keys=True))
        return escape(f"{v:,}" if isinstance(v, int) else str(v))

    body = [_tr(r, [_td(cell(r[k]) if r.get(k) is not None else "-",
                        numeric=not isinstance(r.get(k), (str, dict, list))) for k in keys])
            for r in rows]
    return "<h2>Other metrics</h2>" + _table(["design"] + [k.replace("_", " ") for k in keys], body)


def crossover_section(summary: dict) -> str:
    cross = summary.get("crossover") or []
    if not cross:
        return ""
    out = ["<h2>Where speculation stops paying</h2>"]
    for c in cross:
        param = str(c.get("param", "sweep"))
        at, interp = num(c.get("stops_paying_at")), num(c.get("stops_paying_at_interpolated"))
        where = (f"stops paying at {param} = {at:g}" if at is not None
                 else "does not stop paying within the sweep")
        if interp is not None:
            where += f" (log-interpolated {interp:.3g}"
            band = ci(c, "stops_paying_at_interpolated", "stops_paying_at")
            where += f", CI {band[0]:.3g} to {band[1]:.3g})" if band else ")"
        out.append(f"<p><b>{escape(str(c.get('design')))}</b> vs {escape(str(c.get('baseline')))}: "
                   f"{escape(where)}.</p>")
        pts = [p for p in c.get("speedup") or [] if isinstance(p, dict)]
        if pts:
            head = [PARAM_SHORT.get(param, param)] + [f"{num(p.get(param)) or 0:g}" for p in pts]
            ratios = [_td(escape(fmt(p.get("ratio"), ".3f")) + (
                escape(f" [{p['lo']:.3f}, {p['hi']:.3f}]") if num(p.get("lo")) is not None
                and num(p.get("hi")) is not None else "")) for p in pts]
            out.append(_table(head, ["<tr>" + _td("throughput ratio", numeric=False)
                                     + "".join(ratios) + "</tr>"]))
        extra = {k: v for k, v in c.items() if k not in
                 ("design", "baseline", "param", "speedup", "stops_paying_at",
                  "stops_paying_at_interpolated")}
        if extra:
            out.append(f"<pre>{escape(json.dumps(extra, indent=1, sort_keys=True))}</pre>")
    return "".join(out)


def provenance_section(rows: list[dict]) -> str:
    out = ["<h2>Where the numbers come from</h2><ul>"]
    sources = list(dict.fromkeys(str(r.get("latency_source")) for r in rows))
    out += [f"<li><b>{escape(s)}</b>: {escape(SOURCE_MEANING.get(s, 'see latency notes'))}</li>"
            for s in sources]
    out.append("</ul>")
    seen, body = set(), []
    for r in rows:
        name = str(r.get("name"))
        if name in seen:
            continue
        seen.add(name)
        share = measured_share(r)
        notes = r.get("latency_notes") if isinstance(r.get("latency_notes"), dict) else {}
        stats = r.get("latency_stats") if isinstance(r.get("latency_stats"), dict) else {}
        detail = []
        for role in dict.fromkeys(list(notes) + list(stats)):
            bits = [str(notes[role])] if notes.get(role) else []
            s = stats.get(role)
            if isinstance(s, dict):
                bits.append(f"profile {s.get('profile')}, measured share "
                            f"{fmt(s.get('measured_share'), '.1%')}, {s.get('fallback_calls', 0)} of "
                            f"{s.get('calls', '?')} calls used the roofline fallback somewhere")
                fb = {k: v for k, v in (s.get("fallback_lookups") or {}).items() if v}
                if fb:
                    bits.append("fallback lookups: " + ", ".join(f"{k} {v}" for k, v in fb.items()))
            if bits:
                detail.append(f"{role}: " + "; ".join(bits))
        body.append("<tr>" + _td(f"<b>{escape(name)}</b>", numeric=False)
                    + _td(escape(str(r.get("latency_source"))), numeric=False)
                    + _td(escape(fmt(share, ".1%"))) + _td(escape(_config_text(r)), numeric=False)
                    + _td("<br>".join(escape(d) for d in detail) or "-", numeric=False) + "</tr>")
    out.append(_table(["design", "latency source", "measured share", "configuration",
                       "latency notes"], body))
    out.append("<p class=meta>Acceptance is sampled per round and per sequence from the stated "
               "alpha or per-position rates. Prices are dated scenario inputs. Percentiles are "
               "over the requests of each run.</p>")
    return "".join(out)


def _config_text(r: dict) -> str:
    c = r.get("config") if isinstance(r.get("config"), dict) else {}
    parts = [f"{r.get('strategy', '?')}", f"{c.get('target', '?')}"]
    if c.get("draft"):
        parts.append(f"draft {c['draft']} ({c.get('draft_placement', 'colocated')})")
    if c.get("gamma") is not None:
        parts.append(f"gamma {c['gamma']}")
    if c.get("alpha") is not None:
        parts.append(f"alpha {c['alpha']}")
    parts.append(f"{c.get('replicas', 1)} x {c.get('tp', '?')} {c.get('gpu', '?')}")
    kv = num(r.get("kv_capacity_tokens")) or num((c.get("memory") or {}).get("kv_capacity_tokens"))
    if kv is not None:
        parts.append(f"KV {kv:,.0f} tokens/replica")
    if num(c.get("price_per_gpu_hour")) is not None:
        parts.append(f"${c['price_per_gpu_hour']}/GPU-h")
    return ", ".join(parts)


def _image(path: Path) -> str:
    mime = MIME[path.suffix.lower()]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = escape(path.stem.replace("_", " "))
    return (f'<figure><img alt="{alt}" src="data:{mime};base64,{data}">'
            f"<figcaption>{alt}</figcaption></figure>")


def _images(images) -> list[Path]:
    """One image per stem, PNG preferred (SVGs are the same plots, for editing)."""
    paths = [Path(p) for p in images or [] if Path(p).suffix.lower() in MIME]
    stems = {}
    for p in paths:
        if p.stem not in stems or p.suffix.lower() == ".png":
            stems[p.stem] = p
    return list(stems.values())


def render_html(summary: dict, images, title: str) -> str:
    rows = [r for r in summary.get("deployments", []) if isinstance(r, dict)]
    slo = slo_of(summary)
    slo_txt = ("SLO: " + ", ".join(f"P99 {k[:4].upper()} <= {v:g} s" for k, v in slo.items() if v)
               if slo else "SLO verdict: share of requests within the scenario's SLO "
               "(goodput / request throughput); '-' where the scenario sets none")
    over = [label(r) for r in rows if overloaded(r)]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p class=meta>scenario {escape(str(summary.get('scenario')))}, seed "
        f"{escape(str(summary.get('seed')))}, specsim {escape(str(summary.get('specsim_version')))}"
        + "".join(f", {escape(k)} {escape(json.dumps(summary[k]))}"
                  for k in ("replications", "window") if k in summary) + "</p>",
    ]
    if over:
        parts.append('<p class=miss>Overloaded (arrivals outpace service; latencies grow with the '
                     "run length): " + escape(", ".join(over)) + "</p>")
    parts += [f"<p class=miss>warning: {escape(w)}</p>" for w in notices.warnings(summary)]
    parts += [f"<p class=meta>note: {escape(n)}</p>" for n in notices.trace_notes(summary)]
    parts += ["<h2>Throughput, cost and SLO</h2>", f"<p class=meta>{escape(slo_txt)}</p>",
              throughput_table(summary, rows), crossover_section(summary)]
    imgs = _images(images)
    if imgs:
        parts.append("<h2>Plots</h2>" + "".join(_image(p) for p in imgs))
    parts += ["<h2>Latency</h2>", latency_tables(rows), other_metrics_table(rows),
              provenance_section(rows)]
    rest = {k: v for k, v in summary.items() if k not in TOP_SHOWN}
    if rest:
        parts.append("<h2>Other data</h2><details><summary>"
                     + escape(", ".join(rest)) + "</summary><pre>"
                     + escape(json.dumps(rest, indent=1, sort_keys=True)) + "</pre></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html(outdir, summary: dict, images, title: str | None = None) -> Path:
    """outdir/summary.html; the title defaults to the scenario's name."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / "summary.html"
    path.write_text(render_html(summary, images, title or f"specsim report: {summary.get('scenario', '?')}"),
                    encoding="utf-8")
    return path
