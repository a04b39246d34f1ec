"""`specsim plan`: parse the arguments, run the planner (simulator/run/plan.py), print the answer."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from simulator.cli.core import out, simulations_bar, user_errors
from simulator.config.plan import load_plan
from simulator.run.executors import TaskCache, make_executor
from simulator.run.plan import run_plan
from simulator.run.plan_report import plan_json, write


@contextmanager
def _bar(enabled: bool):
    """The plan's bar: what is being simulated, tasks done of expected, time left."""
    with simulations_bar(enabled, "planning") as (prog, task):
        yield None if prog is None else (
            lambda label, done, total: prog.update(task, description=label, completed=done,
                                                   total=total))


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
              f"{target}/plan.json, plan.md, pareto.png, summary.html"
              + (", best.yaml" if outcome.best_scenario else "") + "[/]")


def _print(result: dict) -> None:
    """The ranked fleets within 80 columns: long fleet names fold, the verdict is PASS/FAIL with
    the worst P99 over its bound (plan.md and summary.html give the full sentence)."""
    heads = ("GPUs", "$/h", "$/Mtok", "TTFT\np99 s", "TPOT\np99 ms", "worst/\nbound")
    rows = []
    for x in result["ranked"]:
        cost, ratio = x["cost_per_million_tokens"], x.get("worst_slo_ratio")
        rows.append((x["name"], x["meets_slo"], [
            str(x["gpus"]), f"{x['cost_per_hour']:.2f}", "-" if cost is None else f"{cost:.3f}",
            "-" if x["ttft_p99_s"] is None else f"{x['ttft_p99_s']:.3f}",
            "-" if x["tpot_p99_s"] is None else f"{1e3 * x['tpot_p99_s']:.1f}",
            ("PASS " if x["meets_slo"] else "FAIL ") + ("-" if ratio is None else f"{ratio:.2f}x")]))
    widths = [max([len(w) for w in h.split("\n")] + [len(r[2][j]) for r in rows])
              for j, h in enumerate(heads)]
    names = max([5] + [len(r[0]) for r in rows])
    fleet = max(16, min(names, min(out.width, 80) - sum(widths) - 3 * len(heads)))
    t = Table(title=Text(f"specsim plan: {result['plan']} at {result['load']:g} req/s"),
              box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    t.add_column("fleet", overflow="fold", width=fleet)
    for h, w in zip(heads, widths):
        t.add_column(h, justify="right", no_wrap=True, width=w)
    for name, ok, cells in rows:
        t.add_row(Text(name), *cells[:-1], Text(cells[-1], style="" if ok else "red"))
    out.print(t)
    best = result["best"]
    out.print(f"best: {best['name']} ({best['gpus']} GPUs)" if best
              else "no design meets the SLO at this load within the budget", markup=False)


def register(app: typer.Typer) -> None:
    app.command("plan")(user_errors(plan))
