"""`specsim profile`: capture a latency profile of a model on this machine (see simulator/measure/profiler/).

Writes profiles/<device>/<model>/tp<k>.csv + .json, then checks the new profile against itself:
each whole-model forward the capture timed directly is compared with the time the measured
backend composes from the per-layer rows.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from simulator.errors import SpecsimError

_out = Console()
_err = Console(stderr=True, soft_wrap=True, markup=False)


def _command() -> str | None:
    """The exact command line when run as `specsim ...`; None (rebuilt from the options) otherwise."""
    if sys.argv and Path(sys.argv[0]).name == "specsim":
        return shlex.join(["specsim", *sys.argv[1:]])
    return None


def require_torch(command: str) -> None:
    """The profiler and the real engine need PyTorch, an optional extra: say how to add it."""
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        raise SpecsimError(f"{command} needs PyTorch, which this install lacks; add it with "
                           "pip install -e '.[torch]' (from a checkout) or pip install 'specsim[torch]'")


def _refuse_overwrite(root: Path, gpu: str, model: str, tp: int) -> None:
    from simulator.latency.profiles import profile_paths
    csv_path, json_path = profile_paths(root, gpu, model, tp)
    if csv_path.exists() or json_path.exists():
        raise SpecsimError(f"{csv_path} exists: a scenario may be timed from it; give another "
                           "--out (or --device-name), or --force to overwrite it")


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile_cmd(
        model: str = typer.Option(..., "--model", help="catalogue model name, e.g. llama-3.1-8b"),
        tp: int = typer.Option(1, "--tp", help="tensor parallelism: the shard one GPU holds is profiled"),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
        dtype: str = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (default: bf16 on cuda, fp32 on cpu)"),
        grid: str = typer.Option(None, "--grid",
                                 help="quick (tests: ~10 s for tiny-draft on an idle core, a few minutes "
                                      "on busy shared cores or for larger models), medium (a CPU: "
                                      "minutes), default (a GPU); by default medium on cpu, default "
                                      "on cuda"),
        out: Path = typer.Option(Path("profiles"), "--out", help="profiles root folder"),
        device_name: str = typer.Option(None, "--device-name",
                                        help="specsim device name (folder), e.g. h100-sxm; default "
                                             "cpu-local on a CPU, detected on a GPU"),
        threads: int = typer.Option(None, "--threads", help="torch CPU threads (1 gives the steadiest CPU timings)"),
        seed: int = typer.Option(0, "--seed"),
        max_memory_gb: float = typer.Option(None, "--max-memory-gb",
                                            help="skip attention points whose working set exceeds this"),
        forward: bool = typer.Option(True, "--forward/--no-forward", help="time whole-model forwards too"),
        breakdown: bool = typer.Option(True, "--breakdown/--no-breakdown",
                                       help="per-operator torch.profiler rows"),
        force: bool = typer.Option(False, "--force", help="overwrite an existing profile"),
    ) -> None:
        """Measure per-layer operator times of MODEL on this machine into a profile."""
        from simulator.measure.profiler import CaptureOptions, capture_profile
        from simulator.measure.profiler.capture import check_options
        from simulator.latency.profiles import write_profile

        try:
            require_torch("specsim profile")
            grid = grid or ("default" if device == "cuda" else "medium")
            opts = CaptureOptions(model=model, tp=tp, device=device, dtype=dtype, grid=grid,
                                  device_name=device_name, threads=threads, seed=seed,
                                  max_memory_gb=max_memory_gb, with_forward=forward,
                                  with_breakdown=breakdown,
                                  command=_command(),
                                  log=lambda m: _err.print(m, highlight=False))
            check_options(opts)
            known = device_name or ("cpu-local" if device == "cpu" else None)
            if known and not force:  # refuse before minutes of capture, when the folder is known
                _refuse_overwrite(out, known, model, tp)
            prof = capture_profile(opts)
            if not force:
                _refuse_overwrite(out, prof.meta.gpu, prof.meta.model, prof.meta.tp)
            path = write_profile(prof, out)
            from simulator.measure.profiler.validation import validation_table
            rows = validation_table(prof)
        except SpecsimError as e:
            _err.print(Text.assemble(("error: ", "bold red"), str(e)), highlight=False)
            raise typer.Exit(2)
        m = prof.meta
        _out.print(f"wrote {path} and {path.with_suffix('.json').name}: {len(prof.rows)} rows, "
                   f"captured in {m.notes['capture_wall_s']} s on {m.device['name']}", highlight=False,
                   markup=False)
        fo = "null" if m.forward_overhead_s is None else f"{m.forward_overhead_s * 1e3:.3f} ms"
        _out.print(f"forward overhead {fo}; {len(m.notes['skipped'])} points skipped", highlight=False)
        if rows:
            t = Table(title="whole-model forward: timed directly vs composed from the profile")
            for c in ("point", "batch", "q", "ctx", "direct ms", "composed ms", "error"):
                t.add_column(c, justify="right")
            for r in rows:
                t.add_row(r["role"], str(r["batch"]), str(r["q"]), str(r["ctx"]), f"{r['direct_s'] * 1e3:.3f}",
                          f"{r['composed_s'] * 1e3:.3f}", f"{r['error'] * 100:+.1f}%")
            _out.print(t)
