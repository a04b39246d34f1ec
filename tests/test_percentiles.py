"""`specsim run --percentiles`: the summary's latency distributions carry the chosen percentiles
(as `vllm bench serve --percentiles` does), computed like the others, whatever the executor."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import AR_8B, ROOT, scenario_dict


def run(tmp_path, *args, name="out"):
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump(scenario_dict([AR_8B], requests=60)))
    out = tmp_path / name
    r = subprocess.run([sys.executable, "-m", "simulator.cli", "run", str(sc), "--out", str(out),
                        *args], capture_output=True, text=True, cwd=ROOT)
    return r, out


def test_extra_percentiles_are_the_requests_percentiles(tmp_path):
    r, out = run(tmp_path, "--percentiles", "50,95,99.99")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    row = s["deployments"][0]
    ttft = pd.read_csv(out / "requests.csv")["ttft_s"].to_numpy()
    # the four of the contract stay; the chosen ones join them, keyed "p" + the digits
    assert list(row["ttft_s"]) == ["mean", "p50", "p90", "p95", "p99", "p999", "p9999"]
    assert row["ttft_s"]["p95"] == pytest.approx(np.percentile(ttft, 95), rel=1e-6)  # requests.csv keeps 10 significant digits
    assert row["ttft_s"]["p9999"] == pytest.approx(np.percentile(ttft, 99.99), rel=1e-6)  # requests.csv keeps 10 significant digits
    assert s["percentiles"] == [50, 90, 95, 99, 99.9, 99.99]
    assert "P95" in (out / "summary.md").read_text()


def test_default_summary_keeps_the_contract(tmp_path):
    r, out = run(tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert list(s["deployments"][0]["tpot_s"]) == ["mean", "p50", "p90", "p99", "p999"]
    assert "percentiles" not in s


def test_workers_carry_the_percentiles(tmp_path):
    one, a = run(tmp_path, "--percentiles", "95", name="a")
    two, b = run(tmp_path, "--percentiles", "95", "--workers", "2", name="b")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()


@pytest.mark.parametrize("bad", ["150", "0", "x,50", ""])
def test_bad_percentiles_are_one_line_errors(tmp_path, bad):
    r, _ = run(tmp_path, "--percentiles", bad)
    assert r.returncode == 2 and "--percentiles" in r.stderr and "Traceback" not in r.stderr
