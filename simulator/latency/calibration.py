"""Saved roofline calibrations (profiles/<gpu>/calibration.json): the file format, reading and
writing it, and `derived_params(gpu)`, which gives a GPU its own calibration or carries the
nearest calibrated GPU's efficiencies over by datasheet. The fit that produces a calibration
is simulator/measure/calibrate.py.

Efficiencies are fractions of datasheet peak, so a RooflineLatency built for a new GPU with the
carried efficiencies scales by its own datasheet.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from simulator import __version__
from simulator.errors import SpecsimError
from simulator.user_files import load_user_json
from simulator.hardware.gpus import GPU, GPUS
from simulator.latency.roofline import RooflineParams

CALIBRATION_FILE = "calibration.json"
CALIBRATION_VERSION = 1
CALIBRATION_KEYS = ("format_version", "gpu", "params", "fitted", "residuals", "default_residuals",
                    "layer_overhead_fit", "sources", "profile_source", "date", "command",
                    "specsim_version", "notes")
FITTED_NON_ATTENTION = ("compute_efficiency", "memory_efficiency")
FITTED_ATTENTION = ("attention_compute_efficiency",)
HAS_LAYER_OVERHEAD = "layer_overhead_s" in RooflineParams.field_names()
WEIGHTING_NOTE = ("non_attention points are weighted by their share of the log(tokens) axis in "
                  "the fit, so that decode-sized and prefill-sized batches count alike")
PER_LAYER_NOTE = (
    "params.layer_overhead_s fitted with the efficiencies" if HAS_LAYER_OVERHEAD else
    "RooflineParams has no per-layer fixed cost, so params holds the fit without one; "
    "layer_overhead_fit shows the fit with one (seconds per layer, added to every layer's "
    "non-attention time) and its residuals")

# Architecture generation of the catalogue GPUs (not a datasheet figure, so not in simulator/hardware/gpus.py):
# used to pick the calibrated GPU whose kernels reach similar fractions of peak.
ARCHITECTURE = {"a100-80gb-sxm": "nvidia-ampere", "a40": "nvidia-ampere",
                "l40s": "nvidia-ada", "l4": "nvidia-ada",
                "h100-sxm": "nvidia-hopper", "h100-pcie": "nvidia-hopper", "h200-sxm": "nvidia-hopper",
                "b200": "nvidia-blackwell", "mi300x": "amd-cdna3", "mi325x": "amd-cdna3"}


@dataclass
class Calibration:
    """A fitted RooflineParams plus how well it fits, where it came from, and the alternative fit
    with a per-layer fixed cost."""

    gpu: str
    params: RooflineParams
    fitted: list[str]
    residuals: dict
    default_residuals: dict
    layer_overhead_fit: dict
    sources: list[str]
    profile_source: str
    date: str
    command: str
    specsim_version: str = __version__
    notes: str = f"{WEIGHTING_NOTE}. {PER_LAYER_NOTE}"

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in CALIBRATION_KEYS if k != "format_version"}
        d["params"] = asdict(self.params)
        return {"format_version": CALIBRATION_VERSION, **d}


# ---- saved calibrations and derived GPUs -----------------------------------------------------------

def calibration_path(gpu_name: str, root: Path | str = Path("profiles")) -> Path:
    return Path(root) / gpu_name / CALIBRATION_FILE


def save_calibration(cal: Calibration, root: Path | str = Path("profiles")) -> Path:
    path = calibration_path(cal.gpu, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cal.to_dict(), indent=2) + "\n")
    return path


def load_calibration(path: Path | str) -> Calibration:
    path = Path(path)
    d = load_user_json(path, "calibration file")
    if not isinstance(d, dict):
        raise SpecsimError(f"{path}: expected a JSON object with keys {', '.join(CALIBRATION_KEYS)}")
    missing = [k for k in CALIBRATION_KEYS if k not in d]
    unknown = [k for k in d if k not in CALIBRATION_KEYS]
    if missing or unknown:
        raise SpecsimError(f"{path}: " + "; ".join(
            ([f"missing key(s) {', '.join(missing)}"] if missing else [])
            + ([f"unknown key(s) {', '.join(unknown)}"] if unknown else []))
            + f"; expected {', '.join(CALIBRATION_KEYS)}")
    if d["format_version"] != CALIBRATION_VERSION:
        raise SpecsimError(f"{path}: key 'format_version' is {d['format_version']!r}, expected "
                           f"{CALIBRATION_VERSION}")
    params = RooflineParams.checked(d["params"], f"{path}: params")
    names = RooflineParams.field_names()
    fitted = d["fitted"]
    if not isinstance(fitted, list) or not all(isinstance(k, str) and k in names for k in fitted):
        raise SpecsimError(f"{path}: key 'fitted' is {fitted!r}, expected a list of parameter "
                           f"names ({', '.join(names)})")
    for k in ("residuals", "default_residuals", "layer_overhead_fit"):
        if not isinstance(d[k], dict):
            raise SpecsimError(f"{path}: key {k!r} is {d[k]!r}, expected an object")
    if d["gpu"] != path.parent.name:
        raise SpecsimError(f"{path}: key 'gpu' is {d['gpu']!r} but the file sits under "
                           f"{path.parent.name!r} (expected <gpu>/{CALIBRATION_FILE})")
    fields = {k: d[k] for k in CALIBRATION_KEYS if k not in ("format_version", "params")}
    return Calibration(params=params, **fields)


def _distance(a: GPU, b: GPU) -> tuple[int, float]:
    """Same architecture first, then the closest ridge point (FLOP/byte) in log terms."""
    arch_a, arch_b = ARCHITECTURE.get(a.name), ARCHITECTURE.get(b.name)
    same = arch_a is not None and arch_a == arch_b
    return (0 if same else 1, abs(math.log(a.ridge_flop_per_byte / b.ridge_flop_per_byte)))


def derived_params(gpu: GPU, root: Path | str = Path("profiles"),
                   nearest: bool = True) -> tuple[RooflineParams, str] | None:
    """RooflineParams for `gpu` from the saved calibrations under `root`, and where they came from.

    `gpu`'s own calibration if it has one ("calibrated on ..."); else the nearest calibrated GPU's
    ("derived: ..."): the same architecture generation if any (its kernels and libraries reach
    similar fractions of peak), else the closest ridge point, which decides which ops are
    compute- and which memory-bound at serving batch sizes and so which efficiency matters.
    Efficiencies are fractions of datasheet peak and carry across by the new datasheet; the
    fixed-time params (overheads, all-reduce latency) carry across unchanged. None if nothing
    under `root` is calibrated (or, with nearest=False, if `gpu` itself is not).
    """
    root = Path(root)
    own = calibration_path(gpu.name, root)
    if own.is_file():
        cal = load_calibration(own)
        return cal.params, f"calibrated on {gpu.name} ({cal.profile_source})"
    if not nearest:
        return None
    candidates = []
    for path in sorted(root.glob(f"*/{CALIBRATION_FILE}")) if root.is_dir() else []:
        name = path.parent.name
        if name in GPUS:
            candidates.append((_distance(gpu, GPUS[name]), name, path))
    if not candidates:
        return None
    _, name, path = min(candidates)
    cal = load_calibration(path)
    fitted = ", ".join(f.replace("_efficiency", "") for f in cal.fitted)
    return cal.params, (f"derived: calibrated on {name} ({cal.profile_source}; fitted {fitted}), "
                        f"scaled by datasheet to {gpu.name}")
