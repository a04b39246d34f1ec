"""`specsim calibrate-engine`: fit a deployment's serving-engine costs to the user's own benchmark
results (simulator/deploy/engine_fit.py) and save them for `engine: {calibrated: PATH}`."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from simulator.cli.core import user_errors
from simulator.config.loading import load_scenario
from simulator.config.workload import generate
from simulator.deploy.deployments import resolve
from simulator.deploy.engine_fit import DEFAULT_FIELDS, fit_engine, read_measurements
from simulator.errors import SpecsimError
from simulator.physics.lookahead import decode_context

_out = Console()


@user_errors
def calibrate_engine(
    scenario: Path = typer.Argument(..., help="scenario whose deployment was measured (its workload "
                                              "gives the lengths)"),
    measurements: list[Path] = typer.Argument(..., help="`vllm bench serve --save-result` JSON "
                                                        "files and/or CSV files"),
    deployment: str = typer.Option(None, "--deployment", help="deployment name (default: the "
                                                               "first with a draft, else the first)"),
    fit: str = typer.Option(",".join(DEFAULT_FIELDS), "--fit", help="EngineCosts fields to fit"),
    strategy: str = typer.Option(None, "--strategy", help="ar or sd, for JSON files whose name "
                                                          "does not say"),
    gamma: int = typer.Option(None, "--gamma", help="lookahead of SD JSON files"),
    out: Path = typer.Option(None, "--out", help="where to save (default profiles/<gpu>/engine.json)"),
) -> None:
    """Fit the engine's implementation costs to measured AR/SD TPOT at a few concurrencies."""
    sc, base = load_scenario(scenario)
    deps = sc.deployments
    pick = ([d for d in deps if d.name == deployment] if deployment
            else [d for d in deps if d.draft is not None][:1] or deps[:1])
    if not pick:
        raise SpecsimError(f"--deployment: no deployment named {deployment!r} in {scenario}")
    index = deps.index(pick[0])
    dep = resolve(pick[0], index, base)
    req = generate(sc.workload, sc.seed, base)
    context = decode_context(float(req.prompt.mean()), float(req.output.mean()))
    rows = read_measurements(measurements, strategy, gamma)
    result = fit_engine(dep, rows, context, tuple(f.strip() for f in fit.split(",") if f.strip()))
    path = out or base / "profiles" / dep.gpu.name / "engine.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result.as_json(), "deployment": dep.name,
                                "measurements": [str(p) for p in measurements]}, indent=2) + "\n")
    for k, v in result.fitted.items():
        _out.print(f"{k} = {v:.4g}", markup=False)
    _out.print(f"rms error {result.rms_log_error:.1%} over {len(rows)} measurements; saved "
               f"{escape(str(path))} (use engine: {{calibrated: {escape(str(path))}}})")


def register(app: typer.Typer) -> None:
    app.command("calibrate-engine")(calibrate_engine)
