"""The command line: run/check contract, clear errors (exit 2, no traceback), shipped scenarios."""
import json
import re
import subprocess
import sys
from pathlib import Path

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
    assert {f.name for f in (tmp_path / "out").iterdir()} == {"summary.md", "summary.json", "requests.csv"}
    csv = (tmp_path / "out" / "requests.csv").read_text().splitlines()
    assert len(csv) == 1 + 2 * 60
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "Where the numbers come from" in md and "roofline" in md


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
    outside = [p for p in re.findall(r"path: *([^,}\s]+)", scenario.read_text())
               if not (scenario.parent / p).resolve().is_relative_to(ROOT.resolve())
               and not (scenario.parent / p).exists()]
    if outside:  # e.g. the Vidur traces under ../shared/data, beside the project, not in it
        pytest.skip(f"needs data beside the project: {outside[0]}")
    r = specsim("check", scenario)
    assert r.returncode == 0, r.stderr


def test_catalogue_listings():
    r = specsim("models")
    assert r.returncode == 0 and "llama-3.1-405b" in r.stdout and "opt-66b" in r.stdout
    r = specsim("gpus")
    assert r.returncode == 0 and "mi325x" in r.stdout
