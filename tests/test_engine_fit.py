"""`specsim calibrate-engine` recovers known engine costs from synthetic measurements with noise,
and a fit on concurrency 1 and 8 predicts 32 and 64."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import yaml

from conftest import ROOT, SD_8B, scenario_dict
from simulator.config.loading import parse_scenario
from simulator.deploy.deployments import resolve
from simulator.deploy.engine_fit import Measurement, fit_engine, predict_tpot

TRUE = {"cpu_step_fixed_s": 3e-3, "cpu_per_seq_s": 4e-5, "proposer_step_s": 1.5e-3}
PRESET = "vllm-0.6-batch-expansion-cudagraph"
CONTEXT = 384


def deployment():
    d = scenario_dict([{**SD_8B, "engine": {"preset": PRESET}}])
    return resolve(parse_scenario(d).deployments[0], 0, ROOT)


def synthetic(dep, concurrencies, noise, seed=0):
    truth = replace(dep.engine, **TRUE)
    rng = np.random.default_rng(seed)
    out = []
    for c in concurrencies:
        for s, g in (("ar", 0), ("sd", 4)):
            t = predict_tpot(dep, truth, Measurement(c, s, g, 1.0, "x"), CONTEXT)
            out.append(Measurement(c, s, g, t * (1 + noise * rng.standard_normal()), f"{s}@{c}"))
    return out, truth


def test_fit_recovers_known_parameters_within_5_percent():
    dep = deployment()
    rows, _ = synthetic(dep, (1, 4, 8, 16, 32), noise=0.005)
    fit = fit_engine(dep, rows, CONTEXT)
    for k, v in TRUE.items():
        assert fit.fitted[k] == pytest.approx(v, rel=0.05), k
    assert fit.rms_log_error < 0.02


def test_a_fit_on_concurrency_1_and_8_predicts_32_and_64():
    dep = deployment()
    rows, truth = synthetic(dep, (1, 8), noise=0.01)
    fit = fit_engine(dep, rows, CONTEXT)
    for c in (32, 64):
        for s, g in (("ar", 0), ("sd", 4)):
            m = Measurement(c, s, g, 1.0, "x")
            assert predict_tpot(dep, fit.costs, m, CONTEXT) == pytest.approx(
                predict_tpot(dep, truth, m, CONTEXT), rel=0.05)


def test_cli_reads_vllm_json_and_csv_and_scenarios_use_the_result(tmp_path):
    dep = deployment()
    rows, _ = synthetic(dep, (1, 8, 32), noise=0.0)
    files = []
    for m in rows[:2]:  # vllm bench serve results, strategy/gamma from the file name
        p = tmp_path / f"bench-{m.strategy}{'-g4' if m.strategy == 'sd' else ''}-c{m.concurrency}.json"
        p.write_text(json.dumps({"max_concurrency": m.concurrency, "mean_tpot_ms": m.tpot_s * 1e3,
                                 "output_throughput": 1.0}))
        files.append(p)
    with open(tmp_path / "more.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["concurrency", "strategy", "gamma", "output_tok_s", "tpot_ms"])
        for m in rows[2:]:
            w.writerow([m.concurrency, m.strategy, m.gamma, "", m.tpot_s * 1e3])
    files.append(tmp_path / "more.csv")
    sc = scenario_dict([{**SD_8B, "engine": {"preset": PRESET}}],
                       prompt={"dist": "fixed", "value": 352}, output={"dist": "fixed", "value": 64})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sc))
    out = tmp_path / "engine.json"
    r = subprocess.run([sys.executable, "-m", "simulator.cli", "calibrate-engine",
                        str(tmp_path / "s.yaml"), *map(str, files), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    saved = json.loads(out.read_text())
    assert saved["preset"] == PRESET
    for k, v in TRUE.items():
        assert saved["params"][k] == pytest.approx(v, rel=0.05)
    used = scenario_dict([{**SD_8B, "engine": {"calibrated": str(out)}}])
    got = resolve(parse_scenario(used).deployments[0], 0, ROOT).engine
    assert got.proposer_step_s == pytest.approx(TRUE["proposer_step_s"], rel=0.05)


def test_bad_measurement_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("concurrency,strategy,gamma,tpot_ms\n8,xx,4,12\n")
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump(scenario_dict([SD_8B])))
    r = subprocess.run([sys.executable, "-m", "simulator.cli", "calibrate-engine", str(sc),
                        str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "row 2: strategy must be 'ar' or 'sd'" in r.stderr
    assert "Traceback" not in r.stderr
