"""The command line: run/check contract, clear errors (exit 2, no traceback), shipped scenarios."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import AR_8B, ROOT, SD_8B, scenario_dict

SPECSIM = [sys.executable, "-m", "simulator.cli"]
DIST = {"mean", "p50", "p90", "p99", "p999"}
CONTRACT = {"name", "strategy", "gpus", "requests_completed", "output_tokens", "duration_s",
            "throughput_tokens_per_s", "throughput_requests_per_s", "ttft_s", "tpot_s", "itl_s",
            "e2e_s", "mean_tokens_per_round", "acceptance_rate", "gpu_busy_fraction",
            "goodput_requests_per_s", "cost_per_million_tokens", "latency_source"}


def specsim(*args, cwd=ROOT):
    return subprocess.run([*SPECSIM, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def write(tmp_path, d, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d) if not isinstance(d, str) else d)
    return p


def test_run_json_contract(tmp_path):
    p = write(tmp_path, scenario_dict([AR_8B, SD_8B], requests=60))
    r = specsim("run", p, "--json", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)  # stdout is exactly the JSON
    assert s["scenario"] == "t" and s["seed"] == 3
    for dep in s["deployments"]:
        assert CONTRACT <= dep.keys()
        for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
            assert set(dep[k]) == DIST
    assert {f.name for f in (tmp_path / "out").iterdir()} == {
        "summary.md", "summary.json", "requests.csv", "summary.html",
        *(f"{stem}.{ext}" for stem in ("latency_cdf", "busy_breakdown") for ext in ("png", "svg"))}
    csv = (tmp_path / "out" / "requests.csv").read_text().splitlines()
    assert len(csv) == 1 + 2 * 60
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "Where the numbers come from" in md and "roofline" in md


def test_total_token_throughput_is_prompt_plus_output_over_duration(tmp_path):
    """vLLM bench serve's total token throughput, checked against requests.csv."""
    p = write(tmp_path, scenario_dict([AR_8B, SD_8B], requests=40))
    s = json.loads(specsim("run", p, "--json", "--out", tmp_path / "out").stdout)
    req = pd.read_csv(tmp_path / "out" / "requests.csv")
    for dep in s["deployments"]:
        r = req[req.deployment == dep["name"]]
        duration = r.finish_s.max() - r.arrival_s.min()
        assert dep["prompt_tokens"] == r.prompt_tokens.sum()
        assert dep["throughput_total_tokens_per_s"] == pytest.approx(
            (r.prompt_tokens.sum() + r.output_tokens.sum()) / duration, rel=1e-6)
        assert dep["throughput_total_tokens_per_s"] > dep["throughput_tokens_per_s"]


def test_console_fits_80_columns_and_wide_shows_everything(tmp_path):
    p = write(tmp_path, scenario_dict([AR_8B, SD_8B], requests=30))
    env = {**os.environ, "COLUMNS": "80"}
    r = subprocess.run([*SPECSIM, "run", p, "--out", tmp_path / "o"], capture_output=True, text=True,
                       cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert max(map(len, r.stdout.splitlines())) <= 80 and "…" not in r.stdout
    assert "TPOT" in r.stdout and "$/Mtok" in r.stdout and "ITL" not in r.stdout
    w = subprocess.run([*SPECSIM, "run", p, "--out", tmp_path / "o", "--wide"], capture_output=True,
                       text=True, cwd=ROOT, env=env)
    assert w.returncode == 0 and "…" not in w.stdout
    assert all(h in w.stdout for h in ("ITL", "E2E", "total", "median ms", "goodput"))


def test_report_rerenders_a_folder_without_simulating(tmp_path):
    """specsim report DIR redraws summary.md, the plots and summary.html from summary.json and
    requests.csv: the same bytes the run wrote (plots are byte-reproducible)."""
    p = write(tmp_path, scenario_dict([AR_8B, SD_8B], requests=30))
    out = tmp_path / "out"
    assert specsim("run", p, "--out", out).returncode == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    for f in out.iterdir():
        if f.name not in ("summary.json", "requests.csv", "summary.md"):
            f.unlink()
    (out / "requests.csv").rename(tmp_path / "requests.csv")  # without it: no CDFs, the rest drawn
    r = specsim("report", out)
    assert r.returncode == 0, r.stderr
    assert not (out / "latency_cdf.png").exists() and (out / "busy_breakdown.png").exists()
    (tmp_path / "requests.csv").rename(out / "requests.csv")
    r = specsim("report", out)
    assert r.returncode == 0, r.stderr
    after = {f.name: f.read_bytes() for f in out.iterdir()}
    assert after == before
    bad = specsim("report", tmp_path / "nowhere")
    assert bad.returncode == 2 and "summary.json" in bad.stderr and "Traceback" not in bad.stderr


def test_run_seed_override(tmp_path):
    p = write(tmp_path, scenario_dict([SD_8B], requests=30))
    a = json.loads(specsim("run", p, "--json", "--seed", "5", "--out", tmp_path / "a").stdout)
    assert a["seed"] == 5


BAD = {
    "typo key": (lambda d: d["workload"].update(reqests=5), "workload.reqests", "unknown key"),
    "wrong type": (lambda d: d["deployments"][0].update(tp="four"), "deployments[0].tp", "integer"),
    "negative rate": (lambda d: d["workload"]["arrival"].update(rate_per_s=-2),
                      "workload.arrival.rate_per_s", "greater than 0"),
    "tp not dividing heads": (lambda d: d["deployments"][0].update(tp=3), "deployments[0].tp", "divide"),
    "does not fit": (lambda d: d["deployments"][0].update(target="llama-3.1-70b", tp=1),
                     "deployments[0]", "does not fit"),
    "unknown model": (lambda d: d["deployments"][0].update(target="llama-9"), "deployments[0].target",
                      "unknown model"),
    "sd without draft": (lambda d: d["deployments"][0].update(strategy="sd"), "deployments[0]",
                         "needs draft"),
    "missing trace": (lambda d: d["workload"].update(prompt_tokens={"dist": "trace", "path": "nope.csv",
                                                                    "column": "x"}),
                      "workload.prompt_tokens", "not found"),
    "unknown roofline param": (lambda d: d["deployments"][0].update(latency={"params": {"speed": 2}}),
                               "deployments[0].latency.params", "unknown roofline parameter"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("command", ["check", "run"])
def test_bad_scenarios_give_clear_errors(tmp_path, case, command):
    mutate, field, text = BAD[case]
    d = scenario_dict([dict(AR_8B)], requests=10)
    mutate(d)
    p = write(tmp_path, d)
    r = specsim(command, p, "--out", tmp_path / "o") if command == "run" else specsim(command, p)
    assert r.returncode == 2, r.stdout + r.stderr
    msg = " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr
    assert str(p.name) in msg and field in msg and text in msg, msg


def test_missing_file_and_bad_yaml(tmp_path):
    r = specsim("check", tmp_path / "nope.yaml")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = specsim("check", write(tmp_path, "name: [unclosed\n"))
    assert r.returncode == 2 and "YAML" in r.stderr


@pytest.mark.parametrize("scenario", sorted((ROOT / "scenarios").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_validate(scenario):
    r = specsim("check", scenario)
    assert r.returncode == 0, r.stderr


def test_catalogue_listings():
    r = specsim("models")
    assert r.returncode == 0 and "llama-3.1-405b" in r.stdout and "opt-66b" in r.stdout
    assert max(map(len, r.stdout.splitlines())) <= 80 and "…" not in r.stdout
    r = specsim("gpus")
    assert r.returncode == 0 and "mi325x" in r.stdout and "Infinity" in r.stdout
    assert max(map(len, r.stdout.splitlines())) <= 80 and "…" not in r.stdout
    models = json.loads(specsim("models", "--json").stdout)
    assert {m["name"]: m["params"] for m in models}["llama-3.1-70b"] > 7e10
    gpus = json.loads(specsim("gpus", "--json").stdout)
    h200 = next(g for g in gpus if g["name"] == "h200-sxm")
    assert h200["hbm_gb"] == 141 and h200["price_per_gpu_hour"] > 0
