"""Core commands: run, report, check, models, gpus."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from simulator.errors import SpecsimError

err = Console(stderr=True)
# Piped output (files, CI logs) is 180 columns wide unless COLUMNS says otherwise; tables that
# must fit a terminal (the compact run table, the catalogues) fit 80 columns anyway.
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else 180)


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
        json_out: bool = typer.Option(False, "--json", help="Print only the summary JSON on stdout"),
        wide: bool = typer.Option(False, "--wide", help="Print every metric (vLLM bench-serve names), "
                                  "not the 80-column table"),
        svg: bool = typer.Option(True, "--svg/--no-svg", help="Write each plot as SVG too (PNG always)"),
        workers: int = typer.Option(1, "--workers", min=1, help="Simulations in parallel (local "
                                    "processes; each holds its own copy of the run's state)"),
        executor: str = typer.Option("local", "--executor", help="local (processes) or ray"),
        ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                                  help="Existing Ray cluster (default: a local Ray for this run)"),
        percentiles: str = typer.Option("50,90,99,99.9", "--percentiles",
                                        help="Latency percentiles in the summary (as vllm bench serve; "
                                             "p50, p90, p99 and p99.9 are always there)")):
    """Simulate every deployment of a scenario; print a comparison and write reports/<name>/
    (summary.json, requests.csv, summary.md, plots, summary.html)."""
    from simulator.run.report import summary_json, write
    from simulator.config.loading import load_scenario

    sc, base = load_scenario(scenario)
    extra = _percentiles(percentiles)
    t0 = time.monotonic()
    with _about(scenario):
        result = _simulate_all(sc, base, seed, workers, executor, ray_address, extra)
    from simulator.run import notices
    _print_notices(scenario, notices.warnings(result.summary), notices.trace_notes(result.summary))
    target = out_dir or Path("reports") / sc.name
    plots = write(result, target, str(scenario), svg)
    if json_out:
        sys.stdout.write(summary_json(result))
        return
    print_summary(result.summary, wide)
    out.print(f"[dim]wrote {target}/summary.md, summary.json, requests.csv, summary.html and "
              f"{len(plots)} plot files ({time.monotonic() - t0:.1f} s wall)[/]")


def _print_notices(scenario: Path, warnings: list[str], notes: list[str]) -> None:
    """Doubtful settings and cycled traces, on stderr (stdout may be the JSON), names literal."""
    for kind, style, lines in (("warning", "bold yellow", warnings), ("note", "bold", notes)):
        for line in lines:
            err.print(Text.assemble((f"{kind}: ", style), f"{scenario}: {line}"), soft_wrap=True)


def _percentiles(text: str) -> tuple[float, ...]:
    """--percentiles "50,90,99,99.9" -> (50.0, 90.0, 99.0, 99.9), each in (0, 100)."""
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SpecsimError(f"--percentiles: expected numbers separated by commas, got {text!r}") from None
    bad = [v for v in vals if not 0 < v < 100]
    if bad or not vals:
        raise SpecsimError(f"--percentiles: each must be between 0 and 100 (exclusive), got {text!r}")
    return vals


def _simulate_all(sc, base: Path, seed, workers: int, executor: str, ray_address,
                  percentiles: tuple = ()):
    """In this process with a bar per simulation (one worker, the default), else on the executor
    with one bar for the whole run and its ETA; the results are the same."""
    from simulator.run.executors import make_executor
    from simulator.run.runner import run_scenario

    if workers == 1 and executor == "local" and ray_address is None:
        with _progress(sys.stderr.isatty()) as factory:
            return run_scenario(sc, base, seed, factory, percentiles=percentiles)
    with make_executor(executor, workers, ray_address) as ex, _run_bar(sys.stderr.isatty(), sc.name) as done:
        return run_scenario(sc, base, seed, executor=ex, done=done, percentiles=percentiles)


@contextmanager
def simulations_bar(enabled: bool, description: str):
    """One bar on stderr over a batch of simulations: done of all, elapsed, time left. Yields
    (progress, task), or (None, None) when disabled (output not a terminal)."""
    if not enabled:
        yield None, None
        return
    prog = Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total} simulations"), TimeElapsedColumn(),
                    TextColumn("elapsed,"), TimeRemainingColumn(), TextColumn("left"),
                    console=err, transient=True)
    task = prog.add_task(description, total=None)
    with prog:
        yield prog, task


@contextmanager
def _run_bar(enabled: bool, name: str):
    """The bar of a run on an executor: `done(n, total=None)` advances it."""
    with simulations_bar(enabled, name) as (prog, task):
        if prog is None:
            yield None
            return

        def done(n: int, total: int | None = None):
            prog.update(task, advance=n, **({"total": total} if total is not None else {}))
        yield done


def print_summary(summary: dict, wide: bool) -> None:
    """The compact table (80 columns) or, with --wide, every metric at the table's natural width;
    then where speculation stops paying."""
    from simulator.run.console import compact_table, natural_width, wide_table
    if wide:
        t = wide_table(summary)
        Console(width=max(out.width, natural_width(t)), force_terminal=out.is_terminal).print(t)
    else:
        out.print(compact_table(summary))
    from simulator.config.sweep import point_words
    for c in summary.get("crossover", []):
        at = c["stops_paying_at"]
        where = f" ({point_words(c['at'])})" if c.get("at") else ""
        out.print(f"{c['design']} vs {c['baseline']}{where}: "
                  + (f"stops paying at {c['param']} = {at:g}" if at is not None
                     else f"pays across the whole {c['param']} sweep"), markup=False)


def report(folder: Path = typer.Argument(..., help="A report folder written by `specsim run`"),
           wide: bool = typer.Option(False, "--wide", help="Print every metric"),
           svg: bool = typer.Option(True, "--svg/--no-svg", help="Write each plot as SVG too")):
    """Re-render DIR's summary.md, plots and summary.html from its summary.json (and requests.csv,
    for the latency CDFs) without re-simulating."""
    import json
    from simulator.run.report import rerender

    from simulator.run import notices
    plots = rerender(folder, svg)
    summary = json.loads((folder / "summary.json").read_text())
    _print_notices(folder, notices.warnings(summary), notices.trace_notes(summary))
    print_summary(summary, wide)
    out.print(f"[dim]re-rendered {folder}/summary.md, summary.html and {len(plots)} plot files[/]")


def _is_plan(path: Path) -> bool:
    """Whether `path` is a plan file (config.loading.file_kind; anything unreadable: not a plan)."""
    from simulator.config.loading import file_kind
    from simulator.user_files import load_user_yaml
    try:
        data = load_user_yaml(path)
    except SpecsimError:
        return False
    return file_kind(data) == "plan"


def _check_plan(path: Path) -> None:
    from simulator.config.plan import load_plan
    from simulator.run.plan_space import enumerate_designs

    plan, _ = load_plan(path)
    designs = enumerate_designs(plan, str(path))
    out.print(f"{path}: ok (plan, {len(designs)} candidate designs)", markup=False)


def check(scenario: Path = typer.Argument(..., help="Scenario or plan YAML file")):
    """Validate a scenario (schema, catalogue names, tp, memory fit) or a plan file without simulating."""
    from simulator.config.loading import load_scenario
    from simulator.run.runner import check_scenario

    if _is_plan(scenario):
        _check_plan(scenario)
        return
    sc, base = load_scenario(scenario)
    from simulator.config.workload import trace_cycles
    from simulator.run.notices import trace_notes
    with _about(scenario):
        deps, req = check_scenario(sc, base)
        cycles = trace_cycles(sc.workload, req.n, base)
    _print_notices(scenario, [w for dep in deps for w in dep.warnings],
                   trace_notes({"trace_cycles": cycles}))
    out.print(f"{scenario}: ok ({len(deps)} deployments, {req.n} requests)", markup=False)


def _catalogue(rows: list[dict], columns: list, title: str, json_out: bool) -> None:
    from simulator.run.console import catalogue_table
    if json_out:
        import json
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    width = min(out.width, 80)
    out.print(catalogue_table(rows, columns, title, width=width), width=width)


def models(json_out: bool = typer.Option(False, "--json", help="Print the catalogue as JSON")):
    """List the built-in model catalogue."""
    from dataclasses import asdict
    from simulator.hardware.models import MODELS
    rows = [asdict(m) for m in MODELS.values()]
    if not json_out:  # billions, and query/KV heads in one column, to fit 80 columns
        rows = [{**r, "params": f"{r['params'] / 1e9:.3g}B", "heads": f"{r['n_heads']}/{r['n_kv_heads']}"}
                for r in rows]
    cols = [("name", "name"), ("params", "params"), ("n_layers", "layers"), ("hidden", "hidden"),
            ("heads", "heads q/kv"), ("head_dim", "head dim"), ("ffn", "ffn"), ("vocab", "vocab"),
            ("max_position", "context")]
    _catalogue(rows, cols, "models", json_out)


def gpus(json_out: bool = typer.Option(False, "--json", help="Print the catalogue as JSON")):
    """List the built-in GPU catalogue (datasheet figures, dated default prices)."""
    from dataclasses import asdict
    from simulator.hardware.gpus import GPUS
    cols = [("name", "name"), ("hbm_gb", "HBM GB"), ("bandwidth_tbps", "TB/s"),
            ("bf16_tflops", "BF16 TFLOP/s"), ("fp8_tflops", "FP8 TFLOP/s"),
            ("interconnect", "interconnect"), ("interconnect_gbps", "GB/s"),
            ("price_per_gpu_hour", "$/GPU-h"), ("price_date", "price date")]
    _catalogue([asdict(g) for g in GPUS.values()], cols,
               "GPUs (dense BF16; prices are dated defaults, override per scenario)", json_out)


def register(app: typer.Typer) -> None:
    app.command("run")(user_errors(run))
    app.command("check")(user_errors(check))
    app.command("report")(user_errors(report))
    app.command("models")(models)
    app.command("gpus")(gpus)
