"""Roofline calibration: recovering known efficiencies, real data, derived GPUs, the CLI."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from simulator.latency.calibration import (HAS_LAYER_OVERHEAD, derived_params, load_calibration,
                                           save_calibration)
from simulator.measure.calibrate import (attention_time, calibrate, calibrate_full,
                                         layer_non_attention)
from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS
from simulator.cli import app
from simulator.errors import SpecsimError
from simulator.latency.roofline import RooflineLatency, RooflineParams
from simulator.latency.profiles import Profile, ProfileMeta, ProfileRow, load_profile, write_profile
from simulator.measure.vidur import import_vidur

os.environ.setdefault("OMP_NUM_THREADS", "1")
VIDUR = Path(__file__).resolve().parents[2] / "shared" / "data" / "vidur" / "profiling"
H100, A100 = GPUS["h100-sxm"], GPUS["a100-80gb-sxm"]


def _meta(model: str, tp: int, gpu: str) -> ProfileMeta:
    return ProfileMeta(model=model, tp=tp, dtype="bf16",
                       device={"name": "synthetic", "memory_bytes": None, "driver": None,
                               "cuda": None, "torch": None},
                       gpu=gpu, attention_backend="synthetic", mode="eager", date="2026-11-23",
                       grid="synthetic", command="test", specsim_version="0", step_overhead_s=None,
                       forward_overhead_s=None, source="specsim-profiler", notes="roofline-generated")


def _synthetic(root: Path, gpu, params: RooflineParams, layer_overhead_s: float = 0.0) -> list[Profile]:
    """Profiles whose times ARE the roofline's at `params` (plus a per-layer fixed cost)."""
    tokens = np.unique(np.geomspace(1, 16384, 40).astype(int))
    out = []
    for name, tp in (("llama-3.1-8b", 1), ("llama-3.1-70b", 4)):
        m = MODELS[name]
        na = layer_non_attention(m, gpu, tp, "bf16", params, tokens, 0.0) + layer_overhead_s
        rows = [ProfileRow("non_attention", 0, 0, 0, int(t), float(v), float(v), float(v), 5)
                for t, v in zip(tokens, na)]
        for b, q, c in [(b, 1, c) for b in (1, 8, 64, 256) for c in (128, 1024, 8192)] + \
                       [(1, q, c) for q in (256, 1024, 4096) for c in (0, 2048)]:
            v = float(attention_time(m, gpu, tp, "bf16", params, b, q, c))
            rows.append(ProfileRow("attention", b, q, c, b * q, v, v, v, 5))
        p = Profile(_meta(name, tp, gpu.name), rows)
        out.append(load_profile(write_profile(p, root)))
    return out


@pytest.mark.parametrize("name,tp", [("llama-3.1-8b", 1), ("llama-3.1-70b", 4), ("opt-1.3b", 2)])
def test_layer_helpers_reproduce_roofline_forward(name, tp):
    m, p = MODELS[name], RooflineParams(compute_efficiency=0.6, memory_efficiency=0.7,
                                        attention_compute_efficiency=0.4)
    lat = RooflineLatency(m, H100, tp, "bf16", p)
    bw = H100.bandwidth_tbps * 1e12 * p.memory_efficiency
    for t in (1, 7, 300, 5000):
        out = lat.forward(np.array([t]), np.array([0]), 0)
        emb = t * m.hidden * 2 / bw
        layer = layer_non_attention(m, H100, tp, "bf16", p, np.array([t]))[0]
        assert (out[0] - emb) / m.n_layers == pytest.approx(layer, rel=1e-12)
    out = lat.forward(np.array([4, 4, 4]), np.array([900, 900, 900]), 0)
    assert out[1] / m.n_layers == pytest.approx(float(attention_time(m, H100, tp, "bf16", p, 3, 4, 900)),
                                                rel=1e-12)


def test_recovers_known_efficiencies(tmp_path):
    truth = RooflineParams(compute_efficiency=0.55, memory_efficiency=0.68,
                           attention_compute_efficiency=0.33)
    cal = calibrate_full(_synthetic(tmp_path, H100, truth))
    for k in ("compute_efficiency", "memory_efficiency", "attention_compute_efficiency"):
        assert getattr(cal.params, k) == pytest.approx(getattr(truth, k), rel=0.03), k
    assert cal.residuals["non_attention"]["max_abs_rel_err"] < 0.02
    assert cal.layer_overhead_fit["layer_overhead_s"] < 1e-7
    # untouched fields stay at their defaults
    d = RooflineParams()
    assert cal.params.step_overhead_s == d.step_overhead_s
    assert cal.params.interconnect_efficiency == d.interconnect_efficiency
    assert calibrate(load_profile(tmp_path / "h100-sxm" / "llama-3.1-8b" / "tp1.csv")).compute_efficiency \
        == pytest.approx(0.55, rel=0.03)


def test_recovers_a_per_layer_fixed_cost(tmp_path):
    truth = RooflineParams(compute_efficiency=0.62, memory_efficiency=0.85)
    cal = calibrate_full(_synthetic(tmp_path, H100, truth, layer_overhead_s=30e-6))
    fit = cal.layer_overhead_fit
    assert fit["layer_overhead_s"] == pytest.approx(30e-6, rel=0.05)
    assert fit["compute_efficiency"] == pytest.approx(0.62, rel=0.03)
    assert fit["memory_efficiency"] == pytest.approx(0.85, rel=0.03)
    assert fit["residuals"]["non_attention"]["rms_log_err"] < 0.01
    if HAS_LAYER_OVERHEAD:  # the roofline has the term: the returned params carry it
        assert cal.params.layer_overhead_s == pytest.approx(30e-6, rel=0.05)
    else:  # without the term the fit is visibly worse
        assert fit["residuals"]["non_attention"]["rms_log_err"] < \
            0.2 * cal.residuals["non_attention"]["rms_log_err"]


@pytest.mark.skipif(not VIDUR.is_dir(), reason="Vidur data not found")
def test_real_h100_data_fits_better_than_defaults(tmp_path):
    profs = [p for p in import_vidur(VIDUR, gpus=["h100"], breakdown=False)
             if p.meta.notes["vidur_model"] in ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-70b-hf")]
    for p in profs:
        write_profile(p, tmp_path)
    cal = calibrate_full([load_profile(p.csv_path) for p in profs])
    fit, default = cal.residuals["non_attention"], cal.default_residuals["non_attention"]
    assert fit["points"] == default["points"] > 1000
    assert fit["rms_log_err"] < 0.8 * default["rms_log_err"]
    assert fit["max_abs_rel_err"] < default["max_abs_rel_err"]
    assert 0.3 < cal.params.compute_efficiency < 0.9 and 0.3 < cal.params.memory_efficiency <= 1.0
    # The saved params are the fit with the per-layer fixed cost (RooflineParams.layer_overhead_s)
    assert "layer_overhead_s" in cal.fitted and cal.params.layer_overhead_s > 1e-6
    assert cal.params.layer_overhead_s == cal.layer_overhead_fit["layer_overhead_s"]
    assert cal.layer_overhead_fit["residuals"]["non_attention"]["rms_log_err"] == fit["rms_log_err"]
    # Llama-2-70B's data also imported as llama-3.1-70b and llama-3-70b (same layers) is fitted once
    assert cal.sources == [str(p.csv_path) for p in profs if p.meta.notes["catalogue_match"] == "hf-id"]
    assert cal.profile_source == "vidur-import"


def _save(root: Path, gpu, ce: float) -> None:
    cal = calibrate_full(_synthetic(root / "src" / gpu.name, gpu,
                                    RooflineParams(compute_efficiency=ce, memory_efficiency=0.7)))
    save_calibration(cal, root)


def test_derived_params_picks_nearest_measured_gpu(tmp_path):
    assert derived_params(GPUS["h200-sxm"], tmp_path) is None
    assert derived_params(GPUS["h200-sxm"], tmp_path / "missing") is None
    _save(tmp_path, A100, 0.5)
    params, why = derived_params(GPUS["h200-sxm"], tmp_path)  # only the A100 is calibrated
    assert "a100-80gb-sxm" in why and why.startswith("derived")
    _save(tmp_path, H100, 0.6)
    params, why = derived_params(GPUS["h200-sxm"], tmp_path)  # same architecture: Hopper
    assert params.compute_efficiency == pytest.approx(0.6, rel=0.03)
    assert why.startswith("derived: calibrated on h100-sxm") and "datasheet" in why
    _, why = derived_params(GPUS["mi300x"], tmp_path)  # ridge 247 is nearer 295 than 153
    assert "h100-sxm" in why
    params, why = derived_params(H100, tmp_path)  # its own calibration
    assert why.startswith("calibrated on h100-sxm")
    # carried efficiencies scale by datasheet: a memory-bound decode on H200 vs H100
    # (the per-layer fixed kernel time is carried as it is, so it is left out of the ratio)
    q, c = np.array([1]), np.array([0])
    bw_only = replace(params, layer_overhead_s=0.0)
    h100 = RooflineLatency(MODELS["llama-3.1-8b"], H100, 1, "bf16", bw_only).forward(q, c, 0)[0]
    h200 = RooflineLatency(MODELS["llama-3.1-8b"], GPUS["h200-sxm"], 1, "bf16", bw_only).forward(q, c, 0)[0]
    assert h100 / h200 == pytest.approx(4.8 / 3.35, rel=1e-6)


def test_bad_calibration_file(tmp_path):
    _save(tmp_path, H100, 0.6)
    path = tmp_path / "h100-sxm" / "calibration.json"
    d = json.loads(path.read_text())
    d["params"]["warp_factor"] = 9
    path.write_text(json.dumps(d))
    with pytest.raises(SpecsimError, match=r"calibration\.json: params: unknown roofline parameter.*warp_factor"):
        load_calibration(path)
    d["params"].pop("warp_factor")
    d["extra"] = 1
    path.write_text(json.dumps(d))
    with pytest.raises(SpecsimError, match=r"calibration\.json: unknown key\(s\) extra"):
        derived_params(H100, tmp_path)


def test_calibrate_mixed_gpus_is_an_error(tmp_path):
    a = _synthetic(tmp_path, H100, RooflineParams())
    b = _synthetic(tmp_path, A100, RooflineParams())
    with pytest.raises(SpecsimError, match="several GPUs"):
        calibrate([a[0], b[0]])


def test_cli_calibrate_and_errors(tmp_path):
    _synthetic(tmp_path, H100, replace(RooflineParams(), compute_efficiency=0.5))
    runner = CliRunner()
    r = runner.invoke(app, ["calibrate", str(tmp_path / "h100-sxm"), "--json"])
    assert r.exit_code == 0, r.output
    saved = load_calibration(tmp_path / "h100-sxm" / "calibration.json")
    assert saved.params.compute_efficiency == pytest.approx(0.5, rel=0.03)
    assert json.loads(r.stdout)["gpu"] == "h100-sxm"
    assert saved.command.startswith("specsim calibrate")
    r = runner.invoke(app, ["calibrate", str(tmp_path / "nope.csv")])
    assert r.exit_code == 2 and "nope.csv" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["import-vidur", str(tmp_path / "h100-sxm")])
    assert r.exit_code == 2 and "no Vidur profiles" in r.output
