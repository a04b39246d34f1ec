"""`specsim import-vidur` and `specsim calibrate`: real GPU data in, fitted roofline params out.

import-vidur converts Vidur's profiling directory into specsim profiles (simulator/measure/vidur.py);
calibrate fits the roofline's efficiencies to one or more profiles of one GPU and saves them as
profiles/<gpu>/calibration.json (simulator/measure/calibrate.py; stored by simulator/latency/calibration.py).
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from simulator.measure.calibrate import calibrate_full, load_gpu_profiles
from simulator.latency.calibration import save_calibration
from simulator.cli.core import user_errors
from simulator.errors import SpecsimError
from simulator.latency.roofline import RooflineParams
from simulator.measure.vidur_files import GPU_NAMES, NOT_IN_CATALOGUE
from simulator.measure.vidur import import_vidur
from simulator.latency.profiles import write_profile

_out = Console()
_err = Console(stderr=True, soft_wrap=True, markup=False)


def import_vidur_cmd(
    directory: Path = typer.Argument(..., help="Vidur's profiling/ directory (or its parent)"),
    out: Path = typer.Option(Path("profiles"), "--out", help="profiles root to write into"),
    gpus: str = typer.Option("", "--gpus", help=f"comma-separated Vidur GPUs to import "
                                                  f"({','.join(GPU_NAMES)}); default all"),
    breakdown: bool = typer.Option(True, "--breakdown/--no-breakdown",
                                   help="keep each Vidur operator as an op:<name> row"),
) -> None:
    """Convert Vidur's GPU profiles (MIT licence) into specsim profiles."""
    chosen = [g.strip() for g in gpus.split(",") if g.strip()] or None
    command = shlex.join(["specsim", "import-vidur", str(directory), "--out", str(out)]
                         + (["--gpus", gpus] if gpus else [])
                         + ([] if breakdown else ["--no-breakdown"]))
    profiles = import_vidur(directory, gpus=chosen, breakdown=breakdown, command=command)
    for vg in sorted({p.meta.notes["vidur_gpu"] for p in profiles} & NOT_IN_CATALOGUE):
        _err.print(f"note: Vidur GPU {vg!r} is not in the GPU catalogue: imported as {GPU_NAMES[vg]!r}; "
                   f"a scenario must define that device inline to use it", highlight=False)
    t = Table(title=escape(f"imported {len(profiles)} profiles into {out}"))
    for col in ("gpu", "model", "tp", "rows", "Vidur model", "catalogue match"):
        t.add_column(col)
    for p in profiles:
        write_profile(p, out)
        t.add_row(*map(escape, (p.meta.gpu, p.meta.model, str(p.meta.tp), str(len(p.rows)),
                                str(p.meta.notes["vidur_model"]), str(p.meta.notes["catalogue_match"]))))
    _out.print(t)


def calibrate_cmd(
    profile: list[Path] = typer.Argument(..., help="profile CSV/JSON file(s), or a GPU directory "
                                                   "such as profiles/h100-sxm (all its profiles)"),
    as_json: bool = typer.Option(False, "--json", help="print the calibration as JSON"),
    root: Path = typer.Option(None, "--root", help="profiles root to save <gpu>/calibration.json "
                                                   "under; default: the profiles' own root"),
) -> None:
    """Fit the roofline's efficiencies to measured profiles of one GPU and save them."""
    profiles = load_gpu_profiles(profile)
    command = shlex.join(["specsim", "calibrate", *map(str, profile)]
                         + (["--json"] if as_json else []) + (["--root", str(root)] if root else []))
    cal = calibrate_full(profiles, command=command)
    if root is None:  # <root>/<gpu>/<model>/tp<k>.csv
        roots = {p.csv_path.parent.parent.parent for p in profiles}
        if len(roots) != 1:
            raise SpecsimError(f"profiles come from several roots ({', '.join(map(str, roots))}); "
                               f"pass --root")
        root = roots.pop()
    path = save_calibration(cal, root)
    if as_json:
        print(json.dumps(cal.to_dict(), indent=2))
        return
    repeats = len(profiles) - len(cal.sources)
    again = f" ({repeats} more repeat their data)" if repeats else ""
    t = Table(title=escape(f"{cal.gpu}: roofline calibrated on {len(cal.sources)} profile(s){again}, "
                           f"saved to {path}"))
    for col in ("param", "fitted", "default"):
        t.add_column(col, justify="right")
    d = RooflineParams()
    for name in cal.fitted:
        t.add_row(name, f"{getattr(cal.params, name):.4g}", f"{getattr(d, name):.4g}")
    _out.print(t)
    r = Table(title="fit: |predicted / measured - 1| and rms log error")
    for col in ("rows", "params", "points", "median", "max", "rms log"):
        r.add_column(col, justify="right")
    fits = [("fitted", cal.residuals), ("defaults", cal.default_residuals),
            (f"+ {cal.layer_overhead_fit['layer_overhead_s'] * 1e6:.1f} us/layer",
             cal.layer_overhead_fit["residuals"])]
    for label, rep in fits:
        for kind, s in rep.items():
            r.add_row(kind, label, str(s["points"]), f"{s['median_abs_rel_err']:.3f}",
                      f"{s['max_abs_rel_err']:.3f}", f"{s['rms_log_err']:.3f}")
    _out.print(r)
    _out.print(cal.notes, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("import-vidur")(user_errors(import_vidur_cmd))
    app.command("calibrate")(user_errors(calibrate_cmd))
