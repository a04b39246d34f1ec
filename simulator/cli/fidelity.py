"""`specsim fidelity`: measure the simulator's error against a real serving loop on this machine.

Serves a closed-loop workload for real (plain torch, AR and SD, simulator/measure/real_engine.py),
profiles both models on the same device (or reuses profiles), simulates the same workload with
the measured acceptance through the engine, and writes table.md, table.csv, fidelity.png and
fidelity.json under --out (see simulator/fidelity/).
"""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from simulator.cli.core import user_errors
from simulator.errors import SpecsimError

_out = Console()
_err = Console(stderr=True, soft_wrap=True, markup=False)


def parse_concurrency(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SpecsimError(f"--concurrency '{text}': expected comma-separated integers, e.g. 1,2,4,8") from None
    if not vals:
        raise SpecsimError("--concurrency: give at least one value")
    return vals


def register(app: typer.Typer) -> None:
    @app.command("fidelity")
    @user_errors
    def fidelity_cmd(
        device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
        target: str = typer.Option("tiny-target", "--target", help="catalogue model served as the target"),
        draft: str = typer.Option("tiny-draft", "--draft",
                                  help="catalogue model for the draft (same widths, fewer layers)"),
        gamma: int = typer.Option(4, "--gamma", help="draft tokens per SD round"),
        concurrency: str = typer.Option("1,2,4,8,16,32", "--concurrency", help="closed-loop concurrencies"),
        requests: int = typer.Option(64, "--requests", help="requests per (mode, concurrency) point"),
        temperature: float = typer.Option(1.0, "--temperature", help="sampling temperature (0 = greedy)"),
        residual_scale: float = typer.Option(0.1, "--residual-scale",
                                             help="init knob of the random pair: lower -> higher alpha "
                                                  "(alpha is measured, never set)"),
        prompt_mean: float = typer.Option(48.0, "--prompt-mean", help="mean prompt tokens (lognormal, cv 0.5)"),
        output_mean: float = typer.Option(48.0, "--output-mean", help="mean output tokens (lognormal, cv 0.5)"),
        seed: int = typer.Option(0, "--seed"),
        out: Path = typer.Option(Path("reports/fidelity"), "--out", help="output folder"),
        profile_grid: str = typer.Option("medium-densectx", "--profile-grid",
                                         help="profiler grid when capturing: medium-densectx (medium with a "
                                              "denser context axis, the default), quick, medium or default"),
        reuse_profile: bool = typer.Option(False, "--reuse-profile",
                                           help="use the profiles under --profiles-dir instead of capturing"),
        profiles_dir: Path = typer.Option(Path("profiles"), "--profiles-dir",
                                          help="where --reuse-profile looks (<dir>/<device>/<model>/tp1.*)"),
        device_name: str = typer.Option(None, "--device-name", help="profile device folder (default cpu-local)"),
        repeats: int = typer.Option(2, "--repeats",
                                    help="real runs per mode and concurrency, interleaved AR, SD, SD, AR; "
                                         "the point's real metrics are their median"),
        max_drift: float = typer.Option(0.15, "--max-drift",
                                        help="rerun (once) a real run whose canary changed by more than this "
                                             "fraction between before and after (0: never)"),
    ) -> None:
        """Real vs simulated throughput, TTFT, TPOT and crossover on this machine."""
        from simulator.cli.profile import require_torch
        require_torch("specsim fidelity")
        from simulator.fidelity.config import FidelityConfig
        from simulator.fidelity.experiment import run_fidelity, write_outputs

        cfg = FidelityConfig(device=device, target=target, draft=draft, gamma=gamma,
                             concurrency=parse_concurrency(concurrency), requests=requests,
                             temperature=temperature, residual_scale=residual_scale,
                             prompt_mean=prompt_mean, output_mean=output_mean, seed=seed,
                             profile_grid=profile_grid, reuse_profile=reuse_profile,
                             profiles_dir=str(profiles_dir), device_name=device_name,
                             repeats=repeats, max_drift=max_drift)
        res = run_fidelity(cfg, out, log=lambda m: _err.print(m, highlight=False))
        paths = write_outputs(res, out)
        _out.print(paths["md"].read_text(), highlight=False, markup=False)
        _out.print(f"wrote {', '.join(str(p) for p in paths.values())}", highlight=False, markup=False)
