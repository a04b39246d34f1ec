"""`specsim sdsl` and `specsim fit-alpha`: the SDSL laws from the command line (the report is
simulator/analysis/sdsl_report.py, the laws simulator/physics/sdsl.py).

`sdsl` answers "which draft and which lookahead for this target?" twice: under SDSL's FLOP cost
model (the paper's) and under the GPU's roofline latency model at batch 1, because small drafts
are memory-bound and the two rankings can differ.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from simulator.analysis.sdsl_report import read_alpha_csv, sdsl_report
from simulator.errors import SpecsimError
from simulator.physics import sdsl

_out = Console()
_err = Console(stderr=True, soft_wrap=True, markup=False)  # one unwrapped line: messages stay greppable


def _fail(message: str) -> None:
    _err.print(Text.assemble(("error: ", "bold red"), str(message)), highlight=False)
    raise typer.Exit(2)


def _fmt_params(n: float) -> str:
    if n >= 1e10:
        return f"{n / 1e9:.0f}B"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _print_report(r: dict) -> None:
    who = r["draft"] or f"hypothetical N* = {_fmt_params(r['n_star_params'])} draft"
    _out.print(Text.assemble(("SDSL", "bold"), f" target {r['target']} ({_fmt_params(r['target_params'])}), "
                             f"{who}; D = {r['training_tokens']:.3g} tokens, ppl law {r['ppl_law']}"),
               highlight=False)
    _out.print(f"  alpha    {r['alpha']:.4f}  (band +/- RMSE {r['alpha_rmse']:.3f}: "
               f"{r['alpha_band'][0]:.4f} .. {r['alpha_band'][1]:.4f})", highlight=False)
    _out.print(f"  gamma*   {r['gamma_opt']:.3f}  (best whole lookahead {r['gamma_int']})", highlight=False)
    _out.print(f"  speedup  {r['speedup']:.3f}x over AR under the FLOP model "
               f"(band {r['speedup_band'][0]:.3f} .. {r['speedup_band'][1]:.3f})", highlight=False)
    if r["speedup_latency"] is not None:
        _out.print(f"           {r['speedup_latency']:.3f}x at gamma {r['gamma_latency']} under "
                   f"{r['gpu']} roofline latencies", highlight=False)
    _out.print(f"  N*       {_fmt_params(r['n_star_params'])} (mu*M + M0), "
               f"{_fmt_params(r['n_star_optimizer_params'])} (numerical optimum over the laws)",
               highlight=False)
    t = Table(title=escape(f"Candidate drafts for {r['target']} on {r['gpu']}, ranked by GPU speedup"),
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("#GPU", "draft", "size", "alpha", "gamma*", "xFLOP", "#FLOP", "gamma", "xGPU"):
        t.add_column(col, no_wrap=True, min_width=len(col), justify="left" if col == "draft" else "right")
    for c in r["candidates"]:
        t.add_row(str(c["rank_latency"]), escape(c["draft"] + ("" if c["vocab_match"] else " (v)")),
                  _fmt_params(c["params"]), f"{c['alpha']:.3f}", f"{c['gamma_opt']:.2f}",
                  f"{c['speedup_flops']:.2f}", str(c["rank_flops"]), str(c["gamma_latency"]),
                  f"{c['speedup_latency']:.2f}")
    _out.print(t)
    for s in r["skipped"]:
        _out.print(f"  skipped {s['draft']}: {s['reason']}", highlight=False, markup=False)
    for note in r["notes"]:
        _out.print(f"  note: {note}", highlight=False, markup=False)


def sdsl_cmd(
    target: str = typer.Option(..., "--target", help="Target model (catalogue name)."),
    draft: str | None = typer.Option(None, "--draft", help="Draft model; default: the law's N*."),
    gpu: str = typer.Option("h100-sxm", "--gpu", help="GPU for the latency ranking."),
    tp: int | None = typer.Option(None, "--tp", help="Target tensor parallelism (default: smallest "
                                  "that keeps weights under 80% of HBM)."),
    draft_tp: int = typer.Option(1, "--draft-tp", help="Draft tensor parallelism."),
    training_tokens: float = typer.Option(sdsl.DEFAULT_TRAINING_TOKENS, "--training-tokens",
                                          help="Training tokens D in the perplexity law."),
    ppl_law: str = typer.Option("besiroglu", "--ppl-law", help="besiroglu (default) or chinchilla."),
    context: int = typer.Option(1024, "--context", help="Cached tokens in the latency model."),
    gamma_max: int = typer.Option(16, "--gamma-max", help="Largest lookahead searched."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
) -> None:
    """Acceptance, optimal lookahead and draft size from the SDSL scaling laws."""
    try:
        report = sdsl_report(target, draft, gpu, tp, draft_tp, training_tokens, ppl_law, context,
                             gamma_max)
    except SpecsimError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(report))
    else:
        _print_report(report)


def fit_alpha_cmd(
    file: Path = typer.Argument(..., help="CSV with columns draft_ppl,target_ppl,alpha."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
) -> None:
    """Least-squares fit of the SDSL alpha law alpha = A*draft_ppl + B*target_ppl + C."""
    try:
        fit = sdsl.fit_alpha_law(*read_alpha_csv(file))
    except sdsl.SDSLError as e:
        _fail(f"{file}: {e}")
    except SpecsimError as e:
        _fail(str(e))
    law = fit.law
    if as_json:
        print(json.dumps({"A": law.A, "B": law.B, "C": law.C, "r2": fit.r2, "rmse": fit.rmse,
                          "n_rows": fit.n_rows}))
        return
    ref = sdsl.ALPHA_LAW
    t = Table(title=escape(f"alpha = A*draft_ppl + B*target_ppl + C, fitted on {fit.n_rows} rows of {file}"))
    for col in ("", "fitted", "SDSL published"):
        t.add_column(col, justify="right")
    for name, a, b in (("A", law.A, ref.A), ("B", law.B, ref.B), ("C", law.C, ref.C),
                       ("R^2", fit.r2, ref.r2), ("RMSE", fit.rmse, ref.rmse)):
        t.add_row(name, f"{a:.5g}", f"{b:.5g}")
    _out.print(t)


def register(app: typer.Typer) -> None:
    app.command("sdsl")(sdsl_cmd)
    app.command("fit-alpha")(fit_alpha_cmd)
