"""Shared helpers: build scenarios as dicts and run them without the CLI."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def scenario_dict(deployments, *, requests=200, arrival=None, prompt=None, output=None, **extra):
    d = {
        "name": "t",
        "seed": 3,
        "workload": {
            "requests": requests,
            "arrival": arrival or {"process": "poisson", "rate_per_s": 4},
            "prompt_tokens": prompt or {"dist": "fixed", "value": 256},
            "output_tokens": output or {"dist": "fixed", "value": 64},
        },
        "deployments": deployments,
    }
    d.update(extra)
    return copy.deepcopy(d)


AR_8B = {"name": "ar", "target": "llama-3.1-8b", "gpu": "h100-sxm", "strategy": "ar"}
SD_8B = {"name": "sd", "target": "llama-3.1-8b", "draft": "llama-3.2-1b", "gpu": "h100-sxm",
         "strategy": "sd", "gamma": 4, "acceptance": {"alpha": 0.7}}


def run_dict(d, seed=None):
    from simulator.run.runner import run_scenario
    from simulator.config.loading import parse_scenario
    return run_scenario(parse_scenario(d), ROOT, seed)


@pytest.fixture
def rows():
    def _rows(d, seed=None):
        return {r["name"]: r for r in run_dict(d, seed).summary["deployments"]}
    return _rows


VIDUR = SHARED / "data" / "vidur" / "profiling"  # Vidur's profiling data (MODEL.md section 9)


def vidur_subset(tmp: Path, *models: str, network: str | None = None) -> Path:
    """A Vidur-layout directory holding only some models ("h100/meta-llama/Llama-2-70b-hf") and
    optionally one network folder: symlinks to the real files."""
    root = tmp / "profiling"
    for m in models:
        d = root / "compute" / m
        d.mkdir(parents=True)
        for f in (VIDUR / "compute" / m).iterdir():
            (d / f.name).symlink_to(f)
    if network:
        (root / "network").mkdir(parents=True)
        (root / "network" / network).symlink_to(VIDUR / "network" / network)
    return root
