"""Core commands: run, check, models, gpus."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from simulator.errors import SpecsimError

err = Console(stderr=True)
# Piped output (files, CI logs) gets a wide table instead of rich's 80-column truncation.
out = Console(width=None if sys.stdout.isatty() else 180)


def error_text(message) -> Text:
    """`error: message`, the prefix styled and the message literal (names may hold `[...]`);
    a message of several lines (one per mistake) gets the prefix on each."""
    lines = str(message).splitlines() or [""]
    return Text("\n").join(Text.assemble(("error: ", "bold red"), line) for line in lines)


def user_errors(fn):
    """Print SpecsimError as a clear message with exit code 2, never a traceback."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecsimError as e:
            err.print(error_text(e), highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


@contextmanager
def _about(path: Path):
    """Prefix errors raised after parsing (catalogue, memory, traces) with the scenario file."""
    try:
        yield
    except SpecsimError as e:
        if str(e).startswith(str(path)):
            raise
        raise SpecsimError(f"{path}: {e}") from None


@contextmanager
def _progress(enabled: bool):
    """Progress bars on stderr, shown only once a run has lasted a couple of seconds."""
    if not enabled:
        yield None
        return
    prog = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=err, transient=True, auto_refresh=False)
    start = time.monotonic()
    state = {"started": False}

    def factory(label: str, total: int):
        task = prog.add_task(label, total=total)
        pending = [0]

        def advance(n: int):
            pending[0] += n
            if pending[0] >= 64 or prog.tasks[task].completed + pending[0] >= total:
                prog.update(task, advance=pending[0])
                pending[0] = 0
                if not state["started"] and time.monotonic() - start > 2.0:
                    prog.start()
                    state["started"] = True
                if state["started"]:
                    prog.refresh()
        return advance

    try:
        yield factory
    finally:
        if state["started"]:
            prog.stop()


def run(scenario: Path = typer.Argument(..., help="Scenario YAML file"),
        out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder (default reports/<name>)"),
        seed: Optional[int] = typer.Option(None, "--seed", help="Override the scenario's seed"),
        json_out: bool = typer.Option(False, "--json", help="Print only the summary JSON on stdout")):
    """Simulate every deployment of a scenario; print a comparison and write reports/<name>/."""
    from simulator.run.report import console_table, summary_json, write
    from simulator.run.runner import run_scenario
    from simulator.config.loading import load_scenario

    sc, base = load_scenario(scenario)
    t0 = time.monotonic()
    with _about(scenario), _progress(sys.stderr.isatty()) as factory:
        result = run_scenario(sc, base, seed, factory)
    target = out_dir or Path("reports") / sc.name
    write(result, target, str(scenario))
    if json_out:
        sys.stdout.write(summary_json(result))
        return
    out.print(console_table(result))
    for c in result.summary.get("crossover", []):
        at = c["stops_paying_at"]
        out.print(f"{c['design']} vs {c['baseline']}: "
                  + (f"stops paying at {c['param']} = {at:g}" if at is not None
                     else f"pays across the whole {c['param']} sweep"), markup=False)
    out.print(f"[dim]wrote {escape(str(target))}/summary.md, summary.json, requests.csv "
              f"({time.monotonic() - t0:.1f} s wall)[/]")


def check(scenario: Path = typer.Argument(..., help="Scenario YAML file")):
    """Validate a scenario (schema, catalogue names, tp, memory fit) without simulating."""
    from simulator.deploy.deployments import resolve
    from simulator.deploy.fit import check_fits
    from simulator.deploy.gamma import choose_gamma
    from simulator.config.loading import load_scenario
    from simulator.config.workload import generate

    sc, base = load_scenario(scenario)
    with _about(scenario):
        deps = [resolve(d, i, base) for i, d in enumerate(sc.deployments)]
        req = generate(sc.workload, sc.seed, base)
        for i, (d, dep) in enumerate(zip(sc.deployments, deps)):
            if d.gamma == "auto":  # as `run` does: the chosen gamma sizes memory and the fit
                deps[i] = dep = resolve(d, i, base, gamma=choose_gamma(dep, sc.workload, req).gamma)
            check_fits(dep, req, f"deployments[{i}]")
    for dep in deps:
        for w in dep.warnings:
            err.print(Text.assemble(("warning: ", "bold yellow"), f"{scenario}: {w}"), soft_wrap=True)
    out.print(f"{scenario}: ok ({len(deps)} deployments, {req.n} requests)", markup=False)


def models():
    """List the built-in model catalogue."""
    from simulator.hardware.models import MODELS
    t = Table(title="models")
    for h in ("name", "params", "layers", "hidden", "heads", "kv heads", "head dim", "ffn", "vocab", "context"):
        t.add_column(h, justify="left" if h == "name" else "right")
    for m in MODELS.values():
        t.add_row(m.name, f"{m.params / 1e9:.3g}B", *map(str, (m.n_layers, m.hidden, m.n_heads, m.n_kv_heads,
                                                                m.head_dim, m.ffn, m.vocab, m.max_position)))
    out.print(t)


def gpus():
    """List the built-in GPU catalogue (datasheet figures, dated default prices)."""
    from simulator.hardware.gpus import GPUS
    t = Table(title="GPUs (dense BF16; prices are dated defaults, override per scenario)")
    for h in ("name", "HBM GB", "TB/s", "BF16 TFLOP/s", "FP8 TFLOP/s", "interconnect", "GB/s", "$/GPU-h", "price date"):
        t.add_column(h, justify="left" if h in ("name", "interconnect") else "right")
    for g in GPUS.values():
        t.add_row(g.name, f"{g.hbm_gb:g}", f"{g.bandwidth_tbps:g}", f"{g.bf16_tflops:g}",
                  "-" if g.fp8_tflops is None else f"{g.fp8_tflops:g}", g.interconnect,
                  f"{g.interconnect_gbps:g}", f"{g.price_per_gpu_hour:.2f}", g.price_date)
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("run")(user_errors(run))
    app.command("check")(user_errors(check))
    app.command("models")(models)
    app.command("gpus")(gpus)
