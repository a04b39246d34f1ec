"""The README's figures against the committed example reports (issue 15, item 7).

Each claim is a README snippet with `{}` holes and a function of one curated example
(`reports/examples/<name>/summary.json`, `plan.json` or `fidelity.json`) that fills them, with the
rounding the README uses. A claim holds when the filled snippet occurs in README.md (runs of
whitespace compare as one space, since prose wraps). A figure changed on either side without the
other therefore fails the claim that states it; so does a verdict ("the most", "never pays",
"overloaded"): the fill computes it from the JSON and writes the words the README must say.
The quick start's console block is compared whole with what `specsim run` prints for the example.

To refresh a figure: regenerate the example with its command (README), then edit the README.
"""
from __future__ import annotations

import io
import json
import math
import re
from functools import cache
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
from rich.console import Console

from simulator.analysis.crossover import stops_paying
from simulator.fidelity.config import STEADY_CANARY
from simulator.fidelity.metrics import error_summary
from simulator.hardware.models import MODELS
from simulator.run.console import compact_table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "reports" / "examples"
README = (ROOT / "README.md").read_text(encoding="utf-8")
FLAT = " ".join(README.split())
WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
ORDINALS = {4: "fourth", 5: "fifth", 6: "sixth"}
DISPLAY = {"qwen2.5-0.5b": "Qwen2.5-0.5B", "llama-3.2-1b": "Llama-3.2-1B"}  # the README's spelling


@cache
def ex(name: str) -> dict:
    folder = EXAMPLES / name
    for f in ("summary.json", "plan.json", "fidelity.json"):
        if (folder / f).is_file():
            return json.loads((folder / f).read_text())
    raise FileNotFoundError(folder)


def row(s: dict, name: str, at=None) -> dict:
    return next(r for r in s["deployments"]
                if r["name"] == name and (at is None or next(iter(r["sweep"].values())) == at))


def xo(s: dict, design: str, baseline: str) -> dict:
    return next(c for c in s["crossover"] if c["design"] == design and c["baseline"] == baseline)


def ratio(c: dict, at) -> dict:
    return next(p for p in c["speedup"] if p[c["param"]] == at)


def r2(x: float) -> str:
    return f"{x:.2f}"


def size(model: str) -> str:
    """A draft's size as the README writes it, from its catalogue name: 0.5B, 1B."""
    assert model in MODELS, model
    return model.rsplit("-", 1)[1].upper()


class Claim(NamedTuple):
    example: str
    text: str
    fill: Callable[[dict], tuple]
    count: int = 1  # occurrences in the README (a figure stated twice is checked in both places)


def _range(s):
    vals = [next(iter(r["sweep"].values())) for r in s["deployments"]]
    return f"{min(vals):g}", f"{max(vals):g}"


def _setup(s, name):
    c = next(r for r in s["deployments"] if r["name"] == name)["config"]
    return c["gamma"], f"{c['alpha']:g}"


def _draft_sizes(s):
    return {size(r["config"]["draft"]) for r in s["deployments"] if r["config"]["draft"]}


def _params(label: str) -> float:
    return float(label[:-1]) * {"M": 1e6, "B": 1e9}[label[-1]]


# --- quickstart ---------------------------------------------------------------------------------

def _qs_cut(s):
    ar, sd = row(s, "h100-ar")["tpot_s"]["p50"], row(s, "h100-sd")["tpot_s"]["p50"]
    return (f"{1 - sd / ar:.0%}",)


def _qs_count(s):
    n = {r["requests_completed"] for r in s["deployments"]}
    return (f"{n.pop():,}" if len(n) == 1 else f"{sorted(n)}",)


# --- batch-crossover ----------------------------------------------------------------------------

def _bx(s):
    return xo(s, "sd", "ar")


def _bx_gain(s):
    c = _bx(s)
    return tuple(r2(ratio(c, k)["ratio"]) for k in (1, 32, 64)) + (
        f"{c['stops_paying_at']:g}", f"{c['stops_paying_at_interpolated']:.0f}",
        f"{c['stops_paying_ci']['lo']:g}", f"{c['stops_paying_ci']['hi']:g}",
        "significant" if c["significant"] else "not significant", _qs_count(s)[0])


def _bx_256(s):
    basis = ratio(_bx(s), 256)["basis"]
    p = ratio(_bx(s), 128)
    return ("has no steady window" if basis == "whole-run" else "has a steady window",
            r2(p["ratio"]), r2(p["ci"]["lo"]), r2(p["ci"]["hi"]))


def _bx_whole(s):
    c = _bx(s)
    pts = [p[c["param"]] for p in c["speedup"]]
    _, whole = stops_paying(pts, [p["ratio_whole_run"] for p in c["speedup"]])
    return f"{whole:.1f}", f"{c['stops_paying_at_interpolated']:.1f}"


def _bx_table(s):
    c = _bx(s)
    return tuple(r2(ratio(c, k)["ratio"]) for k in (1, 8, 32, 64, 128)) + (
        f"{c['stops_paying_at']:g}", f"{c['stops_paying_at_interpolated']:.0f}",
        f"{c['stops_paying_ci']['lo']:g}", f"{c['stops_paying_ci']['hi']:g}")


# --- llama70b-h100-vs-h200 ----------------------------------------------------------------------

H1H2 = {"h100-ar": "AR on H100", "h100-sd": "SD on H100", "h200-ar": "AR on H200", "h200-sd": "SD on H200"}


def _h1h2(s):
    rows = s["deployments"]
    carry = sum(not r["overloaded"] for r in rows)
    cheap = min(rows, key=lambda r: r["cost_per_million_tokens"])
    most = max(rows, key=lambda r: r["goodput_requests_per_s"])
    extra = most["cost_per_million_tokens"] / cheap["cost_per_million_tokens"] - 1
    return ("all " + WORDS[carry] if carry == len(rows) else f"{WORDS[carry]} of {len(rows)}",
            H1H2[cheap["name"]], r2(cheap["goodput_requests_per_s"]), r2(cheap["cost_per_million_tokens"]),
            H1H2[most["name"]], r2(most["goodput_requests_per_s"]), f"{extra:.0%}",
            f"{row(s, 'h100-ar')['goodput_requests_per_s']:.1f}")


# --- ssd-vs-sd-llama70b -------------------------------------------------------------------------

def _ssd_head(s):
    c = row(s, "ssd", 1)["config"]
    return c["tp"], size(c["draft"]), ORDINALS[c["draft_gpus"] + c["tp"]], f"{c['alpha']:g}"


def _ssd(s):
    ded, col = xo(s, "ssd", "sd-dedicated"), xo(s, "ssd", "sd-colocated")
    per_gpu = all(row(s, "ssd", p["concurrency"])["throughput_tokens_per_s_per_gpu"]
                  <= row(s, "sd-colocated", p["concurrency"])["throughput_tokens_per_s_per_gpu"]
                  for p in col["speedup"])
    return (r2(ratio(ded, 1)["ratio"]), r2(ratio(ded, 16)["ratio"]), r2(ratio(ded, 64)["ratio"]),
            f"{col['stops_paying_at']:g}", f"{col['stops_paying_at_interpolated']:.1f}",
            "never pays" if per_gpu else "pays somewhere")


# --- draft-size ---------------------------------------------------------------------------------

def _ds(s):
    by = {e["sweep"]["concurrency"]: e for e in s["sdsl"]}
    best = {k: e["best_by_throughput"] for k, e in by.items()}
    params = {d["design"]: d["draft_params"] for e in by.values() for d in e["drafts"]}
    lo, hi = min(params[b] for b in best.values()), max(params[b] for b in best.values())
    losses = [1 - d["throughput_tokens_per_s"] / max(x["throughput_tokens_per_s"] for x in e["drafts"])
              for e in by.values() for d in e["drafts"] if d["draft_params"] >= 1e9]
    if len({best[1], best[8], best[32]}) == 1:
        where = f"the best draft is {best[1]} ({lo / 1e6:.0f}M) at concurrency 1, 8 and 32"
    else:
        at_1_8 = best[1] if best[1] == best[8] else f"{best[1]} at concurrency 1, {best[8]} at 8"
        where = f"the best drafts sit at {lo / 1e6:.0f}M-{hi / 1e6:.0f}M ({at_1_8}, {best[32]} at 32)"
    return (f"{by[1]['n_star_params'] / 1e6:.0f}", where, f"{min(losses):.0%}".rstrip("%"),
            f"{max(losses):.0%}")


def _ds_8b(s):
    big, ar = (row(s, n, 32)["throughput_tokens_per_s"] for n in ("llama-3.1-8b", "ar"))
    return ("slower" if big < ar else "faster"), f"{big:,.0f}", f"{ar:,.0f}"


# --- vllm-blog-70b ------------------------------------------------------------------------------

def _blog_row(qps):
    def fill(s):
        ar, sd = row(s, "ar", float(qps)), row(s, "sd", float(qps))
        a, d = ar["tpot_s"]["mean"], sd["tpot_s"]["mean"]
        state = {(False, False): "both carry the load", (False, True): "SD overloaded",
                 (True, True): "both overloaded", (True, False): "AR overloaded"}
        return (qps, f"{1e3 * a:.1f}", f"{1e3 * d:.1f}", r2(a / d),
                f"{ar['batch']['seqs']['p50']:g}", f"{sd['batch']['seqs']['p50']:g}",
                state[ar["overloaded"], sd["overloaded"]], r2(d / a))
    return fill


def _blog_ends(s):
    t = {(r["name"], r["sweep"]["rate_per_s"]): r["tpot_s"]["mean"] for r in s["deployments"]}
    return r2(t["ar", 1.0] / t["sd", 1.0]), r2(t["sd", 16.0] / t["ar", 16.0])


def _blog_head(s):
    rates = sorted({r["sweep"]["rate_per_s"] for r in s["deployments"]})
    c = row(s, "sd", 1.0)["config"]
    return f"{rates[0]:g}", f"{rates[-1]:g}", r2(c["alpha"]), c["gamma"]


# --- plan-70b-chat ------------------------------------------------------------------------------

def _plan_best(p):
    b = p["best"]
    n = b["replicas"]
    return (f"{WORDS[n]} replica{'s' if n > 1 else ''}", b["tp"], b["gpu"].split("-")[0].upper(), b["tp"], b["strategy"].upper(),
            DISPLAY[b["draft"]],
            b["gamma"], b["gpus"], r2(b["cost_per_hour"]), r2(b["cost_per_million_tokens"]),
            r2(b["ttft_p99_s"]), f"{1e3 * b['tpot_p99_s']:.0f}", r2(b["worst_slo_ratio"]),
            f"{b['capacity_rate_per_s']:.1f}")


def _plan_runners_up(p):
    b, second, third = p["ranked"][:3]
    same = all(r["gpu"] == b["gpu"] and r["tp"] == b["tp"] for r in (second, third))
    gap = max(r["cost_per_million_tokens"] / b["cost_per_million_tokens"] - 1 for r in (second, third))
    return (size(second["draft"]), second["gamma"], size(third["draft"]), third["gamma"],
            "on the same GPUs" if same else "on other GPUs", f"{math.ceil(100 * gap)}%")


def _plan_counts(p):
    passing = all(r["meets_slo"] for r in p["ranked"])
    return (p["candidates_enumerated"], p["simulations"], len(p["rejected"]), p["candidates_evaluated"],
            "all of which found a passing fleet" if passing else "not all of which found a passing fleet")


def _plan_short(p):
    b = p["best"]
    return (b["replicas"], b["tp"], b["gpu"].split("-")[0].upper(), b["strategy"].upper(), size(b["draft"]),
            r2(b["cost_per_million_tokens"]))


def _plan_ask(p):
    return f"{p['load']:g}", f"{p['slo']['ttft_p99_s']:g}", f"{1e3 * p['slo']['tpot_p99_s']:g}"


# --- fidelity-cpu -------------------------------------------------------------------------------

def _fid_errors(f):
    import pandas as pd
    t = pd.DataFrame(f["table"])
    quiet = t[(t["canary"] - 1.0).abs() <= STEADY_CANARY]
    e, q = f["errors"], error_summary(quiet)
    pct = lambda x: f"{100 * x['median_abs']:.1f}"  # noqa: E731
    tgt = lambda x: f"{100 * x['target']:.0f}"  # noqa: E731
    return (pct(e["throughput"]), pct(q["throughput"]), len(quiet), tgt(e["throughput"]),
            pct(e["tpot_mean"]), pct(q["tpot_mean"]), tgt(e["tpot_mean"]),
            pct(e["tpot_p99"]), pct(q["tpot_p99"]), tgt(e["tpot_p99"]),
            pct(e["ttft_p99"]), pct(e["tokens_per_round"]))


def _fid_speedups(f):
    c = f["crossover"]
    pairs = ", ".join(f"{c['speedup_real'][k]:.2f}/{c['speedup_sim'][k]:.2f}" for k in c["speedup_real"])
    both = f"at concurrency {c['real']} in both" if c["real"] == c["predicted"] else "at different points"
    return pairs, both


def _fid_setup(f):
    c = f["config"]
    alphas = [r["alpha"] for r in f["table"] if r["mode"] == "sd"]
    return (r2(sum(alphas) / len(alphas)), c["gamma"], f"{c['temperature']:g}", min(c["concurrency"]),
            max(c["concurrency"]), c["requests"])


CLAIMS = {
    "quickstart-sd-tpot-cut": Claim("quickstart", "SD cuts the time per output token by {}", _qs_cut),
    "quickstart-requests": Claim("quickstart", "simulates {} requests per design", _qs_count),
    "bx-findings": Claim(
        "batch-crossover", "SD's throughput gain falls from {}x at concurrency 1 to {}x at 32 and {}x at 64; "
        "it stops paying at concurrency {} (interpolated {}, 95% CI [{}, {}], {}) with {} requests per run",
        _bx_gain),
    "bx-256-and-128": Claim("batch-crossover", "With 512 requests the concurrency-256 point {} (n = 2C, under "
                            "two turnovers) and is compared on whole runs; the ratios at 128 are {}x [{}, {}]",
                            _bx_256),
    "bx-whole-run": Claim("batch-crossover", "On whole runs of replication 0 (ramp-up and drain included) the "
                          "interpolated crossover is {} at 512 requests, against {} on the steady windows;",
                          _bx_whole),
    "bx-scenario-table": Claim("batch-crossover", "SD {}x at 1, {}x at 128, {}x at 256)",
                               lambda s: tuple(r2(ratio(_bx(s), k)["ratio"]) for k in (1, 128, 256))),
    "bx-replications": Claim("batch-crossover", "closed loop, concurrency {}..{}, {} replications",
                             lambda s: _range(s) + (s["replications"],)),
    "bx-setup": Claim("batch-crossover", "(8B, H100, gamma {}, alpha {}, default engine, steady-state windows, {} "
                      "replications)", lambda s: _setup(s, "sd") + (s["replications"],)),
    "quickstart-setup": Claim("quickstart", "AR vs SD with a {} draft, gamma {}, alpha {}, the default",
                              lambda s: (DISPLAY[row(s, "h100-sd")["config"]["draft"]],) + _setup(s, "h100-sd")),
    "ssd-range": Claim("ssd-vs-sd-llama70b", "and SSD over concurrency {}..{} |", lambda s: _range(s)),
    "draft-size-range": Claim("draft-size", "70B target, drafts from {} to {} with acceptance from the SDSL law",
                              lambda s: (min(_draft_sizes(s), key=_params), max(_draft_sizes(s), key=_params))),
    "h100-h200-tp": Claim("llama70b-h100-vs-h200", "(70B TP{}, 5 req/s, default engine)",
                          lambda s: (row(s, "h100-sd")["config"]["tp"],)),
    "bx-vllm-preset-row": Claim("batch-crossover", "| `vllm` (default) | {} | {} | {} | {} | {} | {} (~{}), [{}, {}] |",
                                _bx_table),
    "bx-plot-alt": Claim("batch-crossover", "SD's throughput over AR's vs concurrency, crossing 1.0 near {}",
                         lambda s: (f"{_bx(s)['stops_paying_at_interpolated']:.0f}",)),
    "h100-h200-findings": Claim(
        "llama70b-h100-vs-h200", "{} carry the load; {} gives {} req/s of goodput under a 1 s TTFT / 40 ms TPOT "
        "SLO at the lowest $/Mtok ({}); {} gives the most ({} req/s) at +{} $/Mtok; AR on H100 meets the TPOT "
        "SLO for only {} req/s", _h1h2),
    "ssd-setup": Claim("ssd-vs-sd-llama70b", "(70B TP{} + {} draft on a {} H100, alpha {})", _ssd_head),
    "ssd-findings": Claim(
        "ssd-vs-sd-llama70b", "SSD over SD with the same dedicated draft GPU: {}x at concurrency 1, {}x at 16, "
        "{}x at 64. Against SD colocated on the 4 target GPUs it stops paying at concurrency {} (interpolated {}); "
        "per GPU it {}.", _ssd),
    "draft-size-findings": Claim(
        "draft-size", "the law's optimal draft is N* = {}M; under the calibrated roofline {}; drafts of "
        "1B+ lose {}-{}", _ds),
    "draft-size-8b": Claim("draft-size", "an 8B draft is {} than AR at concurrency 32 ({} vs {} tok/s)", _ds_8b),
    "blog-findings": Claim("vllm-blog-70b", "vLLM 0.6 engine): {}x at QPS 1 (fitted), {}x slower than AR at QPS 16",
                           _blog_ends),
    "blog-scenario-table": Claim("vllm-blog-70b", "(SD {}x at QPS 1, {}x slower at 16)", _blog_ends),
    "blog-setup": Claim("vllm-blog-70b", "QPS {}..{} (SD", lambda s: _blog_head(s)[:2]),
    "blog-acceptance": Claim("vllm-blog-70b", "(acceptance from the SDSL law, alpha {}, gamma {};",
                             lambda s: _blog_head(s)[2:]),
    "blog-requests": Claim("vllm-blog-70b", "`specsim run scenarios/vllm-blog-70b.yaml`, {} requests per point",
                           _qs_count),
    **{f"blog-qps-{q}": Claim("vllm-blog-70b", "| {} | {} | {} | {}x | {} / {} | |",
                              lambda s, q=q: _blog_row(q)(s)[:6]) for q in (4, 8, 12)},
    "blog-qps-16": Claim("vllm-blog-70b", "| {0} | {1} | {2} | {3}x (SD {7}x slower) | {4} / {5} | {6} (blog: 1.4x "
                         "slower at high QPS) |", _blog_row(16)),
    "blog-qps-20": Claim("vllm-blog-70b", "| {} | {} | {} | {}x | {} / {} | {} |", lambda s: _blog_row(20)(s)[:7]),
    "blog-qps-1": Claim("vllm-blog-70b", "| {} | {} | {} | {}x | {} / {} | fitted (blog: 1.5x) |",
                        lambda s: _blog_row(1)(s)[:6]),
    "plan-answer": Claim(
        "plan-70b-chat", "The answer: {} of Llama-3.1-70B on {}x {} (tp {}), {} with a {} draft at "
        "gamma {}: {} GPUs, ${}/h, ${}/Mtok, P99 TTFT {} s and P99 TPOT {} ms ({} of the bound), capacity {} "
        "req/s per replica", _plan_best),
    "plan-runners-up": Claim("plan-70b-chat", "the next two, a {} draft at gamma {} and a {} draft at gamma {} {}, "
                             "come within {}", _plan_runners_up),
    "plan-counts": Claim("plan-70b-chat", "lookaheads / SSD: {} candidates). `specsim plan scenarios/plan-70b-chat"
                         ".yaml --out reports/examples/plan-70b-chat --workers 2` took 22 s here ({} simulations; "
                         "{} candidates rejected by the memory plan, {} simulated, {})", _plan_counts),
    "plan-scenario-table": Claim("plan-70b-chat", "({}x {}x{}, {} with a {} draft, ${}/Mtok)", _plan_short),
    "plan-scenario-simulations": Claim("plan-70b-chat", "~25 s ({} simulations on 2 workers)",
                                       lambda p: (p["simulations"],)),
    "plan-ask": Claim("plan-70b-chat", "chat at {} req/s under P99 TTFT {} s / TPOT {} ms", _plan_ask, count=2),
    "fidelity-errors": Claim(
        "fidelity-cpu", "| throughput | {}% ({}% over the {} points where the machine ran at profiling speed) | {}% |"
        " | mean TPOT | {}% ({}%) | {}% | | P99 TPOT | {}% ({}%) | {}% | | TTFT P99 | {}% | - | "
        "| tokens per round | {}% | - |", _fid_errors),
    "fidelity-speedups": Claim("fidelity-cpu", "SD/AR speedup real vs predicted by concurrency: {}; SD stops "
                               "paying for good {}.", _fid_speedups),
    "fidelity-setup": Claim("fidelity-cpu", "measured alpha {}, real speculative sampling) at concurrency 1..32 "
                            "on this CPU; the simulator replays the same workload from the CPU profiles with the "
                            "measured per-position acceptance. Result on this 2-core CPU (gamma {}, temperature {}, "
                            "concurrency {}..{}, {} requests per point", _fid_setup),
}


@pytest.mark.parametrize("claim_id", sorted(CLAIMS))
def test_readme_claim_matches_example(claim_id):
    c = CLAIMS[claim_id]
    assert "{" in c.text, f"{claim_id}: a claim without a figure from the example checks nothing"
    expected = " ".join(c.text.format(*c.fill(ex(c.example))).split())
    found = FLAT.count(expected)
    assert found == c.count, (
        f"{claim_id}: README.md should say (from reports/examples/{c.example}):\n  {expected}\n"
        f"found {found} time(s), expected {c.count}. Nearest README text: {_nearest(expected)!r}")


def _nearest(expected: str) -> str:
    """The README passage starting with the claim's first few words, to show what differs."""
    head = re.escape(" ".join(expected.split()[:4]))
    m = re.search(head + r".{0,%d}" % min(len(expected), 400), FLAT)
    return m.group(0) if m else "(the claim's opening words are not in the README)"


def test_quickstart_console_block_is_what_run_prints():
    """The block under `make run prints` is the compact table `specsim run` prints for the example."""
    con = Console(width=80, file=io.StringIO(), color_system=None, force_terminal=False)
    con.print(compact_table(ex("quickstart")))
    printed = [line.rstrip() for line in con.file.getvalue().splitlines()]
    block = README.split("`make run` prints", 1)[1].split("```", 2)[1]
    assert [line.rstrip() for line in block.strip("\n").splitlines()] == printed


def test_every_curated_example_is_checked():
    """A curated example the README describes gets at least one claim here."""
    named = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert named - {c.example for c in CLAIMS.values()} == set()
