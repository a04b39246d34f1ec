"""Imported Vidur GPUs and models are catalogue names (issue 15, item 6): the A40 and every model
Vidur profiled can be named in a scenario, calibrated and run on their imported profiles."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from simulator.cli import app
from simulator.config.loading import parse_scenario
from simulator.deploy.deployments import resolve_gpu, resolve_model
from simulator.errors import SpecsimError
from simulator.hardware.gpus import GPUS, REPORTED_HBM_BYTES
from simulator.hardware.models import MODELS
from simulator.latency.profiles import load_profile
from simulator.measure.calibrate import calibrate_full
from simulator.measure.vidur import write_vidur
from simulator.measure.vidur_files import (GPU_NAMES, NOT_IN_CATALOGUE, find_vidur_models,
                                           specsim_model_names)

from conftest import VIDUR, vidur_subset

os.environ.setdefault("OMP_NUM_THREADS", "1")
needs_vidur = pytest.mark.skipif(not VIDUR.is_dir(), reason=f"Vidur data not found at {VIDUR}")


# ---- the catalogues ------------------------------------------------------------------------------

def test_a40_is_in_the_catalogue_with_its_datasheet():
    a40 = GPUS["a40"]
    assert set(GPU_NAMES.values()) <= set(GPUS) and not NOT_IN_CATALOGUE
    # datasheet: TF32 tensor 74.8 TFLOP/s is half the BF16 rate the catalogue derives fp32 from
    assert a40.peak_flops("fp32") == pytest.approx(74.8e12, rel=1e-3)
    with pytest.raises(ValueError, match="no FP8"):  # Ampere has no FP8 tensor cores
        a40.peak_flops("fp8")
    size, source = REPORTED_HBM_BYTES["a40"]
    assert 44 * 2**30 < a40.memory_bytes == size < 48 * 2**30  # 48 GiB of GDDR6 less ECC
    assert source.startswith("UNVERIFIED") or "http" in source


@needs_vidur
def test_every_vidur_model_is_a_catalogue_model_of_its_shape():
    """Each model Vidur profiled resolves to a catalogue entry whose layers have Vidur's shape
    columns (two independent sources: the HF configs and Vidur's mlp.csv)."""
    models = find_vidur_models(VIDUR)
    names = specsim_model_names(models)
    for vm in models:
        own, how = names[(vm.vidur_gpu, vm.vidur_name)][0]
        m = MODELS[own]
        assert how == "hf-id" and m.hf_id == vm.vidur_name, (vm.vidur_name, how)
        assert (m.n_heads, m.n_kv_heads, m.hidden, m.ffn, m.gated_mlp) == vm.shape.layer_key()
    assert {"llama-2-70b-hf", "llama-2-7b-hf", "codellama-34b-instruct-hf", "qwen-72b",
            "internlm-20b", "phi-2", "llama-3-8b", "llama-3-70b"} <= {n for v in names.values() for n, _ in v}


@pytest.mark.parametrize("resolve,name,suggestion", [
    (resolve_gpu, "a400", "a40"), (resolve_model, "llama-2-7b", "llama-2-7b-hf")])
def test_unknown_names_still_suggest(resolve, name, suggestion):
    with pytest.raises(SpecsimError, match=f"^f: unknown .*'{name}' \\(did you mean '{suggestion}'\\?\\)"):
        resolve(name, "f")


# ---- import, calibrate, run ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def a40_root(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("vidur-a40")
    out = tmp / "profiles"
    write_vidur(vidur_subset(tmp, "a40/meta-llama/Llama-2-7b-hf", "a40/meta-llama/Llama-2-70b-hf"), out,
                breakdown=False, command="test")
    return out


@needs_vidur
def test_a40_import_calibrate_and_run(a40_root, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["calibrate", str(a40_root / "a40"), "--json"])
    assert r.exit_code == 0, r.output
    cal = json.loads(r.stdout)
    assert cal["gpu"] == "a40"
    for k in ("compute_efficiency", "memory_efficiency"):
        assert k in cal["fitted"] and 0.05 < cal["params"][k] <= 1.0 and math.isfinite(cal["params"][k])
    # Llama-2-70B's data is imported under llama-2-70b-hf, llama-3.1-70b, llama-3-70b: fitted once
    assert len(cal["sources"]) == 8 and not any("llama-3" in s for s in cal["sources"])
    assert (a40_root / "a40" / "calibration.json").is_file()

    dep = {"target": "llama-2-7b-hf", "gpu": "a40", "tp": 1, "strategy": "ar"}
    scenario = {
        "name": "a40-vidur", "seed": 2,
        "workload": {"requests": 40, "arrival": {"process": "closed", "concurrency": 4},
                     "prompt_tokens": {"dist": "fixed", "value": 256},
                     "output_tokens": {"dist": "fixed", "value": 16}},
        "deployments": [
            dep | {"name": "measured", "latency": {"backend": "profile", "profiles_dir": str(a40_root)}},
            dep | {"name": "calibrated", "latency": {"backend": "calibrated", "profiles_dir": str(a40_root)}},
            {"name": "70b", "target": "llama-2-70b-hf", "gpu": "a40", "tp": 8, "strategy": "ar",
             "latency": {"backend": "profile", "profiles_dir": str(a40_root)}}]}
    path = tmp_path / "a40.yaml"
    path.write_text(yaml.safe_dump(scenario))
    r = runner.invoke(app, ["check", str(path)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    rows = {d["name"]: d for d in json.loads((tmp_path / "out" / "summary.json").read_text())["deployments"]}
    assert rows["measured"]["latency_source"] == "measured" == rows["70b"]["latency_source"]
    assert rows["calibrated"]["latency_source"] == "derived"
    for row in rows.values():
        assert row["requests_completed"] == 40 and row["output_tokens"] == 40 * 16
        assert 0 < row["tpot_s"]["p50"] < 1.0
    # the measured decode step of a 13.5 GB model is slower than reading its weights at 696 GB/s
    assert rows["measured"]["tpot_s"]["p50"] > MODELS["llama-2-7b-hf"].weight_bytes() / 696e9


@needs_vidur
def test_same_measurement_under_two_names_is_fitted_once(tmp_path):
    out = tmp_path / "profiles"
    src = vidur_subset(tmp_path, "h100/meta-llama/Llama-2-7b-hf", "h100/meta-llama/Llama-2-70b-hf")
    paths = write_vidur(src, out, breakdown=False, command="test")
    assert len(paths) == 16  # 4 tps x (llama-2-7b-hf, llama-2-70b-hf, llama-3.1-70b, llama-3-70b)
    copy = load_profile(out / "h100-sxm" / "llama-3.1-70b" / "tp2.csv")
    assert copy.meta.notes["catalogue_match"] == "layer-shape"
    assert copy.meta.notes["same_data_as"] == ["llama-2-70b-hf", "llama-3-70b"]
    every = [load_profile(p) for p in paths]
    own = [p for p in every if p.meta.notes["catalogue_match"] == "hf-id"]
    both, single = calibrate_full(every), calibrate_full(own)
    # counted twice, the 70B would outweigh the 7B and move the fit
    assert both.params == single.params and len(both.sources) == 8


@needs_vidur
def test_vidur_model_whose_shape_contradicts_its_catalogue_entry(tmp_path):
    import pandas as pd

    df = pd.read_csv(VIDUR / "compute/a40/meta-llama/Llama-2-7b-hf/mlp.csv", nrows=30)
    df["n_expanded_embd"] = 12288
    for org_model in ("meta-llama/Llama-2-7b-hf", "acme/Foo-7B"):
        d = tmp_path / org_model.split("/")[1] / "profiling" / "compute" / "a40" / org_model
        d.mkdir(parents=True)
        df.to_csv(d / "mlp.csv", index=False)
    with pytest.raises(SpecsimError, match="'llama-2-7b-hf' by its HF id, but Vidur's shape"):
        find_and_name(tmp_path / "Llama-2-7b-hf" / "profiling")
    # an unknown model of an unknown shape keeps a slug of its name
    assert find_and_name(tmp_path / "Foo-7B" / "profiling") == [("foo-7b", "none")]


def find_and_name(root: Path) -> list:
    return next(iter(specsim_model_names(find_vidur_models(root)).values()))
