"""table.md: the real-vs-simulated table, the error summary and what the canary saw."""
from __future__ import annotations

from simulator.fidelity.config import METRICS, STEADY_CANARY, TARGETS
from simulator.fidelity.metrics import LABELS, error_summary
from simulator.fidelity.result import FidelityResult


def _points_table(t, has_canary: bool) -> list[str]:
    """One row per (mode, concurrency): each metric real / simulated (error)."""
    head = ["mode", "conc."] + [LABELS[m][0] + " real / sim (err)" for m in METRICS] + (
        ["canary (drift)"] if has_canary else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t.itertuples(index=False):
        d = r._asdict()
        cells = [d["mode"].upper(), str(d["concurrency"])]
        for m in METRICS:
            _, scale, fmt = LABELS[m]
            a, b, e = d[f"{m}_real"], d[f"{m}_sim"], d[f"{m}_err"]
            cells.append(f"{fmt.format(a * scale)} / {fmt.format(b * scale)} ({e * 100:+.0f}%)"
                         if e == e else "-")
        if has_canary:
            cells.append(f"{d['canary']:.2f} ({d['canary_drift'] * 100:.0f}%)")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_table(res: FidelityResult) -> str:
    t = res.table
    has_canary = "canary" in t.columns
    lines = _points_table(t, has_canary)
    cfg = res.config
    er = res.errors
    cr = res.crossover
    fmt_c = lambda c: "none (SD wins at every point)" if c is None else str(c)  # noqa: E731
    summary = ["", "| metric | median abs error | max abs error | target | met |", "|---|---|---|---|---|"]
    for m in METRICS:
        s = er[m]
        summary.append(f"| {m} | {s['median_abs'] * 100:.1f}% | {s['max_abs'] * 100:.1f}% | "
                       + (f"{s['target'] * 100:.0f}% | {'yes' if s['met'] else 'NO'} |" if "target" in s else "- | - |"))
    alphas = [p["alpha"] for p in res.points if p["mode"] == "sd"]
    dev = res.extra.get("device", {})
    hdr = [f"# specsim fidelity: {cfg['target']} (+ {cfg['draft']}, gamma {cfg['gamma']}) on {dev.get('name', cfg['device'])}",
           "",
           f"Closed loop, {cfg['requests']} requests per point, temperature {cfg['temperature']}, "
           f"torch threads {cfg['threads']}; measured alpha {min(alphas):.3f}..{max(alphas):.3f}. "
           f"Error = simulated / real - 1.",
           f"Crossover (the concurrency from which SD throughput stays <= AR's to the end of the "
           f"sweep; a dip that recovers does not count): real {fmt_c(cr['real'])}, "
           f"predicted {fmt_c(cr['predicted'])} ({'within one grid point' if cr['ok'] else 'MORE than one grid point apart'}).",
           ""]
    dr = res.extra.get("drift")
    if dr:
        sp = " ".join(f"{c}: {cr['speedup_real'][c]:.2f}/{cr['speedup_sim'][c]:.2f}" for c in cr.get("grid", []))
        hdr[-1:-1] = [
            "", f"SD/AR throughput speedup real/predicted by concurrency: {sp}.", "",
            f"Real runs per point: {cfg.get('repeats', 1)} per mode, interleaved AR, SD, SD, AR; real metrics are "
            f"their median. Canary (fixed target/draft forwards timed around every run, over what the "
            f"profile charges; 1.00 = the speed the profile was captured at): {dr['ratio_min']:.2f}..{dr['ratio_max']:.2f} "
            f"(median {dr['ratio_median']:.2f}); largest change over a kept run {dr['max_abs_drift_kept'] * 100:.0f}%; "
            f"{len(dr['discarded_runs'])} run(s) discarded and rerun for a canary change > {dr['max_drift'] * 100:.0f}%. "
            f"The canary is reported, never used to scale results."]
    if has_canary:  # the same errors over the points measured while the machine ran at profile speed
        steady = t[(t["canary"] - 1.0).abs() <= STEADY_CANARY]
        if len(steady):
            e = error_summary(steady)
            summary += ["", f"Over the {len(steady)} point(s) whose canary was within {STEADY_CANARY * 100:.0f}% of 1.00 "
                            "(machine at the speed it was profiled at): "
                        + ", ".join(f"{m} {e[m]['median_abs'] * 100:.1f}%" for m in TARGETS) + " median abs error."]
    dom = res.extra.get("dominant_error")
    tail = []
    if dom:
        ex = ", ".join(f"{k} {v:+.2f} s" for k, v in dom["excess_s"].items())
        tail = ["", f"Measured minus predicted time per step part, summed over the sweep: {ex} "
                    f"(largest: {dom['largest']})."]
    return "\n".join(hdr + lines + summary + tail) + "\n"
