"""Sweeps over any field (the grid form) and `specsim run` on the executors."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import AR_8B, ROOT, SD_8B, run_dict, scenario_dict

from simulator.config.loading import parse_scenario
from simulator.config.sweep import point_words
from simulator.errors import SpecsimError

CLOSED = {"process": "closed", "concurrency": 1}


def _grid(grid, arrival=CLOSED, deps=(AR_8B, SD_8B), **kw):
    return scenario_dict(list(deps), requests=30, arrival=arrival, sweep={"grid": grid}, **kw)


@pytest.mark.parametrize("sweep, arrival, expected", [
    # Bug: a misspelt path silently ignored, or no hint given.
    ({"grid": {"workload.arrival.rate": [1]}}, None,
     "sweep.grid: unknown field path 'workload.arrival.rate'"),
    ({"grid": {"deployments[1].gama": [2]}}, None, "did you mean 'deployments[1].gamma'?"),
    # Bug: grid values not validated by the schema (a fractional concurrency run as 2).
    ({"grid": {"workload.arrival.concurrency": [1, 2.5]}}, CLOSED,
     "sweep.grid.workload.arrival.concurrency[1]: Input should be a valid integer"),
    ({"grid": {"deployments.gamma": [2, -1]}}, None,
     "sweep.grid.deployments.gamma[1]: Input should be greater than 0 (got -1)"),
    # Bug: a value that breaks a cross-field rule reported without its grid index.
    ({"grid": {"deployments[0].gamma": [2]}}, None,
     "sweep.grid.deployments[0].gamma[0] = 2 makes deployments[0] invalid: strategy 'ar' takes no gamma"),
    ({"grid": {"deployments[5].tp": [1]}}, None, "the scenario has 2 deployments"),
    ({"grid": {"deployments.name": ["x"]}}, None, "deployment names identify the rows"),
    # Bug: a rate swept over trace arrivals (it has no rate) accepted and ignored.
    ({"grid": {"workload.arrival.rate_per_s": [1]}}, {"process": "trace", "path": "t.csv"},
     "sweep.grid.workload.arrival.rate_per_s[0]: workload.arrival has no such field here (its process is 'trace')"),
    ({"param": "rate_per_s", "values": [1, 2]}, {"process": "trace", "path": "t.csv"},
     "sweep.param 'rate_per_s' does not apply to trace arrivals"),
    # Bug: the same point simulated twice, or a fractional concurrency truncated (old form too).
    ({"grid": {"deployments.tp": [1, 2, 1]}}, None, "grid.deployments.tp: repeated values [1]"),
    ({"param": "concurrency", "values": [1, 2, 2]}, CLOSED, "values[2]: 2 repeats values[1]"),
    ({"param": "concurrency", "values": [1, 2.5]}, CLOSED, "values[1]: concurrency 2.5 is not a whole number"),
    ({"param": "concurrency", "values": [1], "grid": {"deployments.tp": [1]}}, CLOSED,
     "give either 'param' and 'values', or 'grid'"),
])
def test_bad_sweeps_are_one_clear_error(sweep, arrival, expected):
    d = scenario_dict([AR_8B, SD_8B], arrival=arrival, sweep=sweep)
    with pytest.raises(SpecsimError) as e:
        parse_scenario(d, "s.yaml")
    assert str(e.value).startswith("s.yaml: ")
    assert expected in str(e.value)


def test_single_path_grid_matches_the_old_form():
    # Oracle: the grid over workload.arrival.concurrency is the old concurrency sweep, figure for
    # figure; only the key's name differs. Bug caught: the grid path applied to the wrong field,
    # a different seed per point, or the old form's output changed.
    old = run_dict(scenario_dict([AR_8B, SD_8B], requests=30, arrival=CLOSED,
                                 sweep={"param": "concurrency", "values": [1, 16]}))
    new = run_dict(_grid({"workload.arrival.concurrency": [1, 16]}))
    assert [r["sweep"] for r in old.summary["deployments"]] == [{"concurrency": c} for c in (1, 1, 16, 16)]
    assert [r["sweep"] for r in new.summary["deployments"]] == [
        {"workload.arrival.concurrency": c} for c in (1, 1, 16, 16)]
    for a, b in zip(old.summary["deployments"], new.summary["deployments"]):
        assert a["throughput_tokens_per_s"] == b["throughput_tokens_per_s"]
        assert a["tpot_s"] == b["tpot_s"]
    assert "concurrency" in old.requests.columns
    assert (old.requests["concurrency"].values == new.requests["workload.arrival.concurrency"].values).all()
    assert [c["stops_paying_at"] for c in old.summary["crossover"]] == \
        [c["stops_paying_at"] for c in new.summary["crossover"]]
    assert "at" not in new.summary["crossover"][0]


def test_two_axis_grid_rows_crossover_and_columns():
    # Bug caught: a swept deployment field not reaching the engine (SD identical at both gammas),
    # a speculative field applied to the AR baseline (or AR varying with gamma), the crossover
    # mixing gamma values, requests.csv missing a swept path.
    res = run_dict(_grid({"workload.arrival.concurrency": [1, 64], "deployments.gamma": [2, 6]}))
    rows = res.summary["deployments"]
    assert len(rows) == 8
    by = {(r["name"], r["sweep"]["workload.arrival.concurrency"], r["sweep"]["deployments.gamma"]): r
          for r in rows}
    for c in (1, 64):
        assert by[("sd", c, 2)]["config"]["gamma"] == 2 and by[("sd", c, 6)]["config"]["gamma"] == 6
        assert by[("sd", c, 2)]["throughput_tokens_per_s"] != by[("sd", c, 6)]["throughput_tokens_per_s"]
        assert by[("ar", c, 2)]["throughput_tokens_per_s"] == by[("ar", c, 6)]["throughput_tokens_per_s"]
    cross = res.summary["crossover"]
    assert [c["at"] for c in cross] == [{"deployments.gamma": 2}, {"deployments.gamma": 6}]
    for c in cross:
        g = c["at"]["deployments.gamma"]
        ratios = [by[("sd", x, g)]["throughput_tokens_per_s"] / by[("ar", x, g)]["throughput_tokens_per_s"]
                  for x in (1, 64)]
        assert [p["ratio_whole_run"] for p in c["speedup"]] == pytest.approx(ratios)
    assert {"workload.arrival.concurrency", "deployments.gamma"} <= set(res.requests.columns)
    assert len(res.requests) == 8 * 30


def test_indexed_path_changes_one_deployment_only():
    # Bug caught: deployments[i].X applied to every deployment.
    sd2 = {**SD_8B, "name": "sd2"}
    res = run_dict(_grid({"deployments[2].scheduler.max_num_seqs": [1, 4]},
                         arrival={"process": "closed", "concurrency": 4}, deps=(AR_8B, SD_8B, sd2)))
    by = {(r["name"], r["sweep"]["deployments[2].scheduler.max_num_seqs"]): r
          for r in res.summary["deployments"]}
    assert by[("sd", 1)]["throughput_tokens_per_s"] == by[("sd", 4)]["throughput_tokens_per_s"]
    assert by[("sd2", 1)]["throughput_tokens_per_s"] < by[("sd2", 4)]["throughput_tokens_per_s"]


def test_progress_labels_are_words():
    # Bug caught: the raw point dict ({'concurrency': 4}) as the bar's label.
    assert point_words({"concurrency": 4}) == "concurrency 4"
    assert point_words({"workload.arrival.rate_per_s": 2.5, "deployments.engine.preset": "sglang"}) == \
        "rate_per_s 2.5 · preset sglang"
    assert point_words({"deployments.gamma": 2, "deployments[1].gamma": 4}) == \
        "deployments.gamma 2 · deployments[1].gamma 4"
    labels = []
    from simulator.run.runner import run_scenario
    sc = parse_scenario(scenario_dict([SD_8B], requests=10, arrival=CLOSED, replications=2,
                                      sweep={"param": "concurrency", "values": [1, 4]}))
    run_scenario(sc, ROOT, progress=lambda label, n: (labels.append(label), lambda k: None)[1])
    assert labels == ["sd · concurrency 1", "sd · concurrency 1 · rep 1",
                      "sd · concurrency 4", "sd · concurrency 4 · rep 1"]


def test_run_with_one_or_two_workers_writes_identical_files(tmp_path):
    # Bug caught: seeds drawn from the worker or the completion order, results reassembled out of
    # order, or a worker resolving the scenario differently from the parent.
    d = _grid({"workload.arrival.concurrency": [1, 8], "deployments.gamma": [2, 4]}, replications=2)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(d))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    outs = []
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        subprocess.run([sys.executable, "-m", "simulator.cli", "run", str(path), "--out", str(out),
                        "--workers", str(w), "--json", "--no-svg"], check=True, env=env,
                       capture_output=True, cwd=tmp_path)
        outs.append(out)
    for f in ("summary.json", "requests.csv"):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes()
    s = json.loads((outs[0] / "summary.json").read_text())
    assert len(s["deployments"]) == 8 and s["deployments"][0]["replications"] == 2
    assert len(pd.read_csv(outs[0] / "requests.csv")) == 8 * 30


def test_ray_executor_gives_the_in_process_run(tmp_path):
    # Bug caught: a Ray task resolving or seeding differently from this process.
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'specsim[ray]')")
    from simulator.run.executors import RayExecutor
    from simulator.run.report import summary_json
    from simulator.run.runner import run_scenario
    sc = parse_scenario(_grid({"workload.arrival.concurrency": [1, 8], "deployments.gamma": [2, 4]}))
    here = run_scenario(sc, ROOT)
    with RayExecutor(None, 2) as ex:  # starts and stops a local Ray with 2 CPUs
        there = run_scenario(sc, ROOT, executor=ex)
    assert summary_json(there) == summary_json(here)
    assert there.requests.to_csv(index=False) == here.requests.to_csv(index=False)
    import ray
    assert not ray.is_initialized()


def test_check_resolves_every_grid_point():
    # Bug caught: `specsim check` passing a grid whose later point cannot be built (tp 3 does not
    # divide the 32 heads), the error then surfacing only mid-run, or not saying which point.
    from simulator.run.runner import check_scenario
    sc = parse_scenario(_grid({"deployments.tp": [1, 3]}, deps=(AR_8B,)))
    with pytest.raises(SpecsimError, match=r"deployments\[0\]\.tp: tp=3 .* \(at sweep point tp 3\)"):
        check_scenario(sc, ROOT)
