"""Console tables of a run summary (the summary.json contract), and the row facts every report
shares (design label, latency source with the measured share, SLO verdict, confidence intervals).

`compact_table` fits 80 columns; `wide_table` shows every metric; `catalogue_table` lays out the
`specsim models` / `gpus` catalogues at 80 columns. Every cell is a `rich.text.Text`, so names are
printed literally (a design called "[/x]" is not read as markup). Keys the contract may gain
later (`overloaded`, `ci`, `replications`, `window`, ...) are shown when present; none is required
beyond `deployments[].name`.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from rich import box
from rich.table import Table
from rich.text import Text

# What each latency_source means, in words (summary.md and summary.html say it).
SOURCE_MEANING = {
    "measured": "forward passes timed from a latency profile measured on this device",
    "derived": ("roofline with efficiencies fitted to measured profiles: this GPU's, or the nearest "
                "measured GPU's scaled by datasheet"),
    "roofline": "roofline from datasheet peak FLOP/s and bandwidth with default efficiencies",
    "law": "SDSL's ideal cost model (2 x params / peak FLOP/s per forward pass)",
}
SOURCE_SHORT = {"measured": "meas", "derived": "derived", "roofline": "roofline", "law": "law"}
PARAM_SHORT = {"concurrency": "conc", "rate_per_s": "req/s"}


# ---------------------------------------------------------------------------------- row facts
def num(x: Any) -> float | None:
    """A finite float, or None (missing, null, NaN, not a number)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def pct(row: dict, metric: str, key: str) -> float | None:
    """row[metric][key] (e.g. ("tpot_s", "p99")) or None."""
    d = row.get(metric)
    return num(d.get(key)) if isinstance(d, dict) else None


def sweep_point(row: dict) -> tuple[str, float] | None:
    s = row.get("sweep")
    if isinstance(s, dict) and len(s) == 1:
        (k, v), = s.items()
        if num(v) is not None:
            return str(k), float(v)
    return None


def label(row: dict) -> str:
    """Design name, with the sweep point when there is one."""
    p = sweep_point(row)
    return f"{row.get('name', '?')} @{p[0]}={p[1]:g}" if p else str(row.get("name", "?"))


def measured_share(row: dict) -> float | None:
    """Calls-weighted share of forward time taken from measured profile points (target and draft
    latency models together), or None when no latency model reported stats."""
    stats = row.get("latency_stats")
    if not isinstance(stats, dict):
        return None
    tot = w = 0.0
    for s in stats.values():
        if isinstance(s, dict) and num(s.get("measured_share")) is not None:
            calls = num(s.get("calls")) or 1.0
            tot += calls * s["measured_share"]
            w += calls
    return tot / w if w else None


def source_text(row: dict, short: bool = False) -> str:
    """'measured 79%' (with the measured share when latency stats exist), 'roofline', 'derived'."""
    src = str(row.get("latency_source") or "?")
    name = SOURCE_SHORT.get(src, src) if short else src
    share = measured_share(row)
    return f"{name} {share:.0%}" if share is not None else name


def overloaded(row: dict) -> bool:
    return row.get("overloaded") is True


def slo_of(summary: dict) -> dict | None:
    """The SLO thresholds when the summary states them ({"ttft_s", "tpot_s"} or *_p99_s)."""
    slo = summary.get("slo")
    if not isinstance(slo, dict):
        return None
    ttft = num(slo.get("ttft_p99_s", slo.get("ttft_s")))
    tpot = num(slo.get("tpot_p99_s", slo.get("tpot_s")))
    return {"ttft_s": ttft, "tpot_s": tpot} if (ttft or tpot) else None


def slo_verdict(summary: dict, row: dict) -> tuple[str, bool | None]:
    """(short verdict, ok?): an explicit `meets_slo`; else the P99s against the summary's SLO;
    else the share of requests within the SLO (goodput / request throughput); else no SLO."""
    if isinstance(row.get("meets_slo"), bool):
        return ("meets" if row["meets_slo"] else "MISS"), row["meets_slo"]
    slo = slo_of(summary)
    if slo:
        bad = [n for n, m, lim in (("TTFT", "ttft_s", slo["ttft_s"]), ("TPOT", "tpot_s", slo["tpot_s"]))
               if lim is not None and (pct(row, m, "p99") is None or pct(row, m, "p99") > lim)]
        return ("meets" if not bad else "MISS " + "+".join(bad)), not bad
    good, rate = num(row.get("goodput_requests_per_s")), num(row.get("throughput_requests_per_s"))
    if good is not None and rate:
        share = good / rate
        return f"{share:.0%}", share >= 0.99
    return "-", None


def ci(row: dict, *keys: str) -> tuple[float, float] | None:
    """A confidence interval from row["ci"]: the first of `keys` that holds {"lo", "hi"}
    (a key may be "metric.pXX" to read row["ci"][metric][pXX])."""
    c = row.get("ci")
    if not isinstance(c, dict):
        return None
    for k in keys:
        d = c
        for part in k.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        if isinstance(d, dict) and num(d.get("lo")) is not None and num(d.get("hi")) is not None:
            return float(d["lo"]), float(d["hi"])
    return None


def fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    x = num(v)
    return "-" if x is None else format(scale * x, spec)


# ------------------------------------------------------------------------------------- tables
def _title(summary: dict) -> Text:
    t = f"specsim: {summary.get('scenario', '?')}"
    if summary.get("seed") is not None:
        t += f" (seed {summary['seed']})"
    return Text(t)


def _table(title: Text | None, caption: str | None = None) -> Table:
    # no outer edge, one space between columns: an 8-column table fits 80 characters
    return Table(title=title, caption=Text(caption) if caption else None, box=box.SIMPLE_HEAD,
                 show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True,
                 caption_justify="left")


def _num_col(t: Table, header: str, cells: Iterable[str] = ()) -> None:
    """Right-aligned; its header may wrap at spaces, its cells (given) never wrap or truncate."""
    widest = max((len(c) for c in cells), default=0)
    if widest:
        t.add_column(header, justify="right", min_width=widest)
    else:
        t.add_column(header, justify="right", no_wrap=True)


def compact_table(summary: dict) -> Table:
    """Design, tok/s, TTFT P99, TPOT P50/P99, $/Mtok, SLO verdict, latency source; fits 80 columns.
    '!' after a name marks an overloaded design (arrivals outpace service)."""
    rows = [r for r in summary.get("deployments", []) if isinstance(r, dict)]
    params = {p[0] for p in map(sweep_point, rows) if p}
    notes = ["! = overloaded"] if any(map(overloaded, rows)) else []
    if any(measured_share(r) is not None for r in rows):
        notes.append("meas N% = share of forward time from measured profile points")
    t = _table(_title(summary), "; ".join(notes) or None)
    t.add_column("design", overflow="fold", ratio=1)
    if len(params) == 1:
        _num_col(t, PARAM_SHORT.get(next(iter(params)), next(iter(params))))
    for h in ("tok/s", "TTFT\np99 s", "TPOT\np50 ms", "TPOT\np99 ms", "$/Mtok", "SLO"):
        _num_col(t, h)
    t.add_column("latency", no_wrap=True)
    for r in rows:
        cells = [Text(str(r.get("name", "?")) + (" !" if overloaded(r) else ""),
                      style="bold red" if overloaded(r) else "")]
        if len(params) == 1:
            p = sweep_point(r)
            cells.append(Text(f"{p[1]:g}" if p else "-"))
        verdict, ok = slo_verdict(summary, r)
        cells += [Text(fmt(r.get("throughput_tokens_per_s"), ",.0f")),
                  Text(fmt(pct(r, "ttft_s", "p99"), ".3f")),
                  Text(fmt(pct(r, "tpot_s", "p50"), ".1f", 1e3)),
                  Text(fmt(pct(r, "tpot_s", "p99"), ".1f", 1e3)),
                  Text(fmt(r.get("cost_per_million_tokens"), ".3f")),
                  Text(verdict, style="red" if ok is False else ""),
                  Text(source_text(r, short=True))]
        t.add_row(*cells)
    return t


# (header, getter, format, scale) for the wide table; vLLM bench-serve vocabulary
_WIDE = [
    ("GPUs", lambda r: r.get("gpus"), "d", 1),
    ("done", lambda r: r.get("requests_completed"), "d", 1),
    ("req\n/s", lambda r: r.get("throughput_requests_per_s"), ".2f", 1),
    ("out\ntok/s", lambda r: r.get("throughput_tokens_per_s"), ",.0f", 1),
    ("total\ntok/s", lambda r: total_token_throughput(r), ",.0f", 1),
    ("tok/s\n/GPU", lambda r: r.get("throughput_tokens_per_s_per_gpu"), ",.0f", 1),
] + [(f"{m}\n{s} {u}", (lambda r, k=k, s=s: pct(r, k, "p50" if s == "median" else s)), f, sc)
     for m, k, u, f, sc in (("TTFT", "ttft_s", "ms", ".1f", 1e3), ("TPOT", "tpot_s", "ms", ".1f", 1e3),
                            ("ITL", "itl_s", "ms", ".1f", 1e3), ("E2E", "e2e_s", "s", ".2f", 1))
     for s in ("mean", "median", "p99")] + [
    ("tok/\nround", lambda r: r.get("mean_tokens_per_round"), ".2f", 1),
    ("accept", lambda r: r.get("acceptance_rate"), ".0%", 1),
    ("busy", lambda r: r.get("gpu_busy_fraction"), ".0%", 1),
    ("KV\npeak", lambda r: r.get("kv_peak_fraction"), ".0%", 1),
    ("preempt", lambda r: r.get("preemptions"), "d", 1),
    ("$/Mtok", lambda r: r.get("cost_per_million_tokens"), ".3f", 1),
    ("goodput\nreq/s", lambda r: r.get("goodput_requests_per_s"), ".2f", 1),
]
# optional keys shown when any row has them
_OPTIONAL = [("replications", "reps", "d"), ("kv_capacity_tokens", "KV\ntokens", ",.0f"),
             ("batch_seqs_p50", "batch\np50", ".0f"), ("batch_seqs_p99", "batch\np99", ".0f"),
             ("cache_hit_rate", "SSD\nhit", ".0%"), ("draft_gpu_busy_fraction", "draft\nbusy", ".0%")]


def total_token_throughput(row: dict) -> float | None:
    """vLLM's total token throughput (prompt + output tokens per second) when the summary has it."""
    for k in ("throughput_total_tokens_per_s", "total_token_throughput", "total_tokens_per_s"):
        if num(row.get(k)) is not None:
            return num(row[k])
    return None


def _cell(v: Any, spec: str, scale: float = 1) -> Text:
    x = num(v)
    if x is None:
        return Text("-")
    if spec == "d":
        return Text(f"{int(x)}")
    return Text(format(scale * x, spec))


def wide_table(summary: dict) -> Table:
    """Every metric of every row (print it on a wide console or a pager)."""
    rows = [r for r in summary.get("deployments", []) if isinstance(r, dict)]
    opt = [(k, h, f) for k, h, f in _OPTIONAL if any(k in r for r in rows)]
    t = _table(_title(summary), "latency: share of forward time from measured profile points")
    t.add_column("design", no_wrap=True)
    for h, *_ in _WIDE:
        _num_col(t, h)
    for _, h, _f in opt:
        _num_col(t, h)
    for h in ("SLO", "over-\nloaded", "latency"):
        t.add_column(h, no_wrap=True)
    for r in rows:
        verdict, ok = slo_verdict(summary, r)
        cells = [Text(label(r))] + [_cell(g(r), f, sc) for _, g, f, sc in _WIDE]
        cells += [_cell(r.get(k), f) for k, _h, f in opt]
        cells += [Text(verdict, style="red" if ok is False else ""),
                  Text("YES" if overloaded(r) else ("no" if "overloaded" in r else "-"),
                       style="bold red" if overloaded(r) else ""),
                  Text(source_text(r))]
        t.add_row(*cells)
    return t


def natural_width(table: Table) -> int:
    """The width at which `table` prints without folding or truncating a cell (print the wide
    table on Console(width=max(terminal, natural_width(t))) or through a pager)."""
    from rich.console import Console
    from rich.measure import Measurement
    c = Console(width=10_000)
    return Measurement.get(c, c.options, table).maximum


def catalogue_table(rows: Iterable[dict], columns: list, title: str | None = None,
                    width: int = 80) -> Table:
    """A catalogue (models, GPUs) within `width` columns. `columns`: keys, or (key, header) pairs.
    Headers wrap at spaces; numbers are right-aligned and never wrapped; the first column (the
    name) keeps its full width; other text columns wrap at spaces, widest first, only when they
    must."""
    rows = list(rows)
    cols = [(c, c) if isinstance(c, str) else (c[0], c[1]) for c in columns]
    cells = [[_catalogue_cell(r.get(k)) for k, _ in cols] for r in rows]
    numeric = [all(num(r.get(k)) is not None or r.get(k) is None for r in rows) for k, _ in cols]
    word = [max(map(len, h.split())) if h.strip() else 1 for _, h in cols]
    widths = [max([word[j]] + [len(c[j]) for c in cells]) for j in range(len(cols))]
    # text folds at spaces, never inside a word (a date, a name's part)
    floor = [w if numeric[j] or j == 0 else max([word[j]] + [len(x) for c in cells for x in c[j].split()])
             for j, w in enumerate(widths)]
    excess = sum(widths) + 2 * (len(cols) - 1) - width
    while excess > 0:
        j = max(range(len(cols)), key=lambda i: widths[i] - floor[i])
        if widths[j] <= floor[j]:
            break  # cannot fit without truncating a number or a name: let the terminal wrap
        widths[j] -= 1
        excess -= 1
    t = _table(Text(title) if title else None)
    for j, (_, h) in enumerate(cols):
        t.add_column(h, justify="right" if numeric[j] else "left", width=widths[j],
                     overflow="fold")
    for c in cells:
        t.add_row(*map(Text, c))
    return t


def _catalogue_cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}" if abs(v) >= 1e4 else str(v)
    return str(v)
