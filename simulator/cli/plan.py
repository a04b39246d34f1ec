"""`specsim plan`: parse the arguments, run the planner (simulator/run/plan.py), print the answer."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from simulator.cli.core import err, out, user_errors
from simulator.config.plan import load_plan
from simulator.run.executors import TaskCache, make_executor
from simulator.run.plan import run_plan
from simulator.run.plan_report import plan_json, write


@contextmanager
def _bar(enabled: bool):
    """One progress bar on stderr: what is being simulated, tasks done of expected, time left."""
    if not enabled:
        yield None
        return
    prog = Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total} simulations"), TimeElapsedColumn(),
                    TextColumn("elapsed,"), TimeRemainingColumn(), TextColumn("left"),
                    console=err, transient=True)
    task = prog.add_task("planning", total=1)
    with prog:
        yield lambda label, done, total: prog.update(task, description=label, completed=done,
                                                      total=total)


def plan(plan_file: Path = typer.Argument(..., help="Plan YAML file"),
         out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder (default reports/<name>)"),
         json_out: bool = typer.Option(False, "--json", help="Print only plan.json on stdout"),
         workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                               help="Simulations in parallel (default: the machine's cores)"),
         executor: str = typer.Option("local", "--executor", help="local (processes) or ray"),
         ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                                   help="Existing Ray cluster (default: a local Ray for this run)"),
         no_cache: bool = typer.Option(False, "--no-cache", help="Ignore and do not fill DIR/cache")):
    """Find the cheapest fleet (GPU, tp, replicas, AR/SD/SSD, draft, gamma) that meets an SLO at a load."""
    plan_cfg, base = load_plan(plan_file)
    target = out_dir or Path("reports") / plan_cfg.name
    cache = TaskCache(None if no_cache else target / "cache")
    t0 = time.monotonic()
    with make_executor(executor, workers, ray_address) as ex, _bar(sys.stderr.isatty()) as bar:
        outcome = run_plan(plan_cfg, base, str(plan_file), ex, cache, target, bar)
    wall = time.monotonic() - t0
    write(outcome, target, str(plan_file), wall)
    if json_out:
        sys.stdout.write(plan_json(outcome.result))
        return
    _print(outcome.result)
    out.print(f"[dim]{outcome.simulations} simulations ({outcome.simulated} run, "
              f"{outcome.simulations - outcome.simulated} cached) in {wall:.1f} s wall; wrote "
              f"{target}/plan.json, plan.md, pareto.png"
              + (", best.yaml" if outcome.best_scenario else "") + "[/]")


def _print(result: dict) -> None:
    t = Table(title=f"specsim plan: {result['plan']} at {result['load']:g} req/s")
    for h in ("fleet", "GPUs", "$/h", "$/Mtok", "TTFT p99 s", "TPOT p99 ms", "verdict"):
        t.add_column(h, justify="left" if h in ("fleet", "verdict") else "right")
    for x in result["ranked"]:
        tpot = "-" if x["tpot_p99_s"] is None else f"{1e3 * x['tpot_p99_s']:.1f}"
        ttft = "-" if x["ttft_p99_s"] is None else f"{x['ttft_p99_s']:.3f}"
        cost = x["cost_per_million_tokens"]
        t.add_row(x["name"], str(x["gpus"]), f"{x['cost_per_hour']:.2f}",
                  "-" if cost is None else f"{cost:.3f}", ttft, tpot, x["verdict"])
    out.print(t)
    best = result["best"]
    out.print(f"best: {best['name']} ({best['gpus']} GPUs)" if best
              else "no design meets the SLO at this load within the budget", markup=False)


def register(app: typer.Typer) -> None:
    app.command("plan")(user_errors(plan))
