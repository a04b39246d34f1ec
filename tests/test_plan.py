"""specsim plan: the search's answer against brute force, best.yaml, executors, cache, errors."""
import copy
import json
import math
import time
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from conftest import ROOT, run_dict
from simulator.config.plan import load_plan, parse_plan
from simulator.run.executors import TaskCache, make_executor
from simulator.run.plan import confirm_fleets, run_plan
from simulator.run.plan_space import Design, prune, verdict
from simulator.run.plan_report import write
from simulator.config.loading import parse_scenario
from simulator.run.runner import run_scenario

# Llama-3.1-8B at 100 req/s (roofline latencies): one H100 carries it; A100s, priced at $0.90,
# need several. Cheap enough to brute-force every fleet of 1..4 replicas.
PLAN = {
    "name": "known", "seed": 2,
    "workload": {"requests": 400, "arrival": {"process": "poisson", "rate_per_s": 100},
                 "prompt_tokens": {"dist": "uniform", "min": 64, "max": 256},
                 "output_tokens": {"dist": "uniform", "min": 16, "max": 48}},
    "slo": {"ttft_p99_s": 0.25, "tpot_p99_s": 0.02},
    "search": {"target": "llama-3.1-8b", "gpus": ["h100-sxm", "a100-80gb-sxm"], "tp": [1],
               "strategies": [{"strategy": "ar"},
                              {"strategy": "sd", "draft": "llama-3.2-1b", "gamma": 4,
                               "acceptance": {"alpha": 0.7}}],
               "price_per_gpu_hour": {"a100-80gb-sxm": 0.9}},
    "budget": {"max_gpus": 4},
}
SLO_METRICS = {"ttft_p99_s": ("ttft_s", "p99"), "tpot_p99_s": ("tpot_s", "p99")}


def plan_file(tmp_path, d=PLAN, name="plan.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d) if not isinstance(d, str) else d)
    return p


def do_plan(path, out, workers=1, executor="local", cache=False):
    plan, base = load_plan(path)
    with make_executor(executor, workers) as ex:
        o = run_plan(plan, base, str(path), ex, TaskCache(out / "cache" if cache else None), out)
    write(o, out, str(path))
    return o


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    path = plan_file(tmp)
    return do_plan(path, tmp / "out"), tmp / "out"


def brute_force():
    """Every design x 1..4 replicas simulated whole at the load, written here independently."""
    designs = {}
    for gpu, price in (("h100-sxm", None), ("a100-80gb-sxm", 0.9)):
        for st in ({"strategy": "ar"}, {"strategy": "sd", "draft": "llama-3.2-1b", "gamma": 4,
                                        "acceptance": {"alpha": 0.7}}):
            d = {"name": "x", "target": "llama-3.1-8b", "gpu": gpu, "tp": 1,
                 "router": "least_outstanding", **st}
            if price is not None:
                d["price_per_gpu_hour"] = price
            designs[(gpu, st["strategy"])] = d
    out = []
    for (gpu, strategy), d in designs.items():
        for n in range(1, 5):
            sc = {"name": "bf", "seed": PLAN["seed"], "workload": copy.deepcopy(PLAN["workload"]),
                  "deployments": [{**d, "replicas": n}]}
            row = run_dict(sc).summary["deployments"][0]
            ok = (all(row[m][p] <= PLAN["slo"][k] for k, (m, p) in SLO_METRICS.items())
                  and not row["overloaded"])
            cost = row["cost_per_million_tokens"]  # withheld (None) when overloaded
            out.append({"gpu": gpu, "strategy": strategy, "replicas": n, "meets": ok,
                        "cost": cost if cost is not None else row["overload"]["cost_per_million_tokens"]})
    return out


def test_best_is_the_cheapest_fleet_that_brute_force_finds(planned):
    o, _ = planned
    best = o.result["best"]
    fleets = brute_force()
    passing = [f for f in fleets if f["meets"]]
    truth = min(passing, key=lambda f: f["cost"])
    assert (best["gpu"], best["strategy"], best["replicas"]) == \
        (truth["gpu"], truth["strategy"], truth["replicas"])
    assert best["cost_per_million_tokens"] == pytest.approx(truth["cost"], rel=1e-12)
    # The answer needs several replicas, and a cheaper fleet of the same design fails: a space
    # where sizing (not only the design choice) decides.
    assert best["replicas"] > 1
    cheaper = [f for f in fleets if f["cost"] < truth["cost"]]
    assert cheaper and not any(f["meets"] for f in cheaper)
    # Every ranked fleet cheaper than the best misses the SLO, and says by how much.
    for r in o.result["ranked"]:
        if r["cost_per_million_tokens"] < best["cost_per_million_tokens"]:
            assert not r["meets_slo"] and r["worst_slo_ratio"] > 1
    assert o.result["ranked"][0] == best


def test_best_yaml_reproduces_the_best(planned):
    o, out = planned
    sc = parse_scenario(yaml.safe_load((out / "best.yaml").read_text()))
    row = run_scenario(sc, out).summary["deployments"][0]
    best = o.result["best"]
    assert row["name"] == best["name"]
    assert row["ttft_s"]["p99"] == best["ttft_p99_s"]
    assert row["tpot_s"]["p99"] == best["tpot_p99_s"]
    assert row["cost_per_million_tokens"] == best["cost_per_million_tokens"]
    assert row["gpus"] == best["gpus"]
    assert {f.name for f in out.iterdir()} >= {"plan.json", "plan.md", "pareto.png", "best.yaml",
                                               "summary.html"}


def test_plan_summary_html_names_the_best_and_embeds_the_pareto_plot(planned):
    o, out = planned
    page = (out / "summary.html").read_text()
    assert page.count('src="data:image/png;base64,') == 1 and "http" not in page
    best = o.result["best"]
    assert best["name"] in page and f"{1e3 * best['tpot_p99_s']:.2f}" in page  # P99 TPOT table, ms
    assert page.count("<tr") >= len(o.result["ranked"])


def test_capacity_is_bisected_and_replicas_sized_from_it(planned):
    o, _ = planned
    for r in o.result["ranked"]:
        probes = r["capacity_probes"]
        assert len(probes) == o.result["method"]["bisection_steps"]
        passed = [p["rate_per_s"] for p in probes if p["meets_slo"]]
        assert r["capacity_rate_per_s"] == (max(passed) if passed else 0.0)
        # the fleet search started at ceil(load / capacity) replicas
        start = math.ceil(o.result["load"] / r["capacity_rate_per_s"])
        assert start in [t["replicas"] for t in r["replicas_tried"]]


def test_fleet_search_walks_to_the_fewest_passing_replicas():
    """Fleets pass from 2 replicas up (a stub simulator): started above, the search walks down
    to 2 and stops when 1 fails; started below, it adds replicas until one passes; never past
    max_extra_replicas steps or the budget."""
    from types import SimpleNamespace
    plan = parse_plan(PLAN)
    seen = []

    def stub(label, tasks):
        rows = []
        for t in tasks:
            n = t.scenario["deployments"][0]["replicas"]
            seen.append((t.scenario["deployments"][0]["name"], n))
            lat = 0.1 if n >= 2 else 1.0  # TTFT p99 bound is 0.25
            rows.append({"ttft_s": {"p99": lat}, "tpot_s": {"p99": 0.01}})
        return rows

    def design(name, capacity):
        dep = {"name": name, "target": "llama-3.1-8b", "gpu": "h100-sxm", "tp": 1, "strategy": "ar"}
        return Design(name, "h100-sxm", 1, "ar", None, None, dep,
                      SimpleNamespace(tp=1, draft_gpus=0), bound_rate_per_s=1e9,
                      capacity_rate_per_s=capacity)
    down, up, limit, budget = (design("down", 50.0), design("up", 100.0), design("limit", 25.0),
                               design("budget", 10.0))
    confirm_fleets(plan, [down, up, limit, budget], Path("."), stub)
    assert sorted(down.fleets) == [1, 2]       # starts at 2, passes; 1 fails: stop
    assert sorted(up.fleets) == [1, 2]         # starts at 1, fails; 2 passes: stop
    assert sorted(limit.fleets) == [2, 3, 4]   # starts at 4; at most 2 steps down
    assert sorted(budget.fleets) == [2, 3, 4]  # needs 10, the 4-GPU budget caps the start at 4
    assert len(seen) == 2 + 2 + 3 + 3


def test_local_executor_with_1_and_2_workers_gives_identical_plan_json(tmp_path):
    path = plan_file(tmp_path)
    one = do_plan(path, tmp_path / "out", workers=1)
    a = (tmp_path / "out" / "plan.json").read_bytes()
    png = (tmp_path / "out" / "pareto.png").read_bytes()
    two = do_plan(path, tmp_path / "out", workers=2)
    assert (tmp_path / "out" / "plan.json").read_bytes() == a
    assert (tmp_path / "out" / "pareto.png").read_bytes() == png
    assert one.simulated == two.simulated == one.simulations > 0


def test_ray_executor_gives_identical_plan_json(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'specsim[ray]')")
    path = plan_file(tmp_path)
    do_plan(path, tmp_path / "out", workers=1)
    a = (tmp_path / "out" / "plan.json").read_bytes()
    t0 = time.monotonic()
    do_plan(path, tmp_path / "out", workers=2, executor="ray")  # starts and stops a local Ray
    print(f"ray plan: {time.monotonic() - t0:.1f} s")
    assert (tmp_path / "out" / "plan.json").read_bytes() == a
    import ray
    assert not ray.is_initialized()


def test_cache_skips_unchanged_simulations(tmp_path):
    path = plan_file(tmp_path)
    first = do_plan(path, tmp_path / "out", cache=True)
    a = (tmp_path / "out" / "plan.json").read_bytes()
    again = do_plan(path, tmp_path / "out", cache=True)
    assert first.simulated == first.simulations > 0
    assert again.simulated == 0 and again.simulations == first.simulations
    assert (tmp_path / "out" / "plan.json").read_bytes() == a
    # An edit that touches only the A100 designs re-simulates only those.
    d = copy.deepcopy(PLAN)
    d["search"]["price_per_gpu_hour"]["a100-80gb-sxm"] = 0.8
    edited = do_plan(plan_file(tmp_path, d), tmp_path / "out", cache=True)
    a100 = sum(len(r["capacity_probes"]) + len(r["replicas_tried"])
               for r in edited.result["ranked"] if r["gpu"] == "a100-80gb-sxm")
    assert edited.simulated == a100 < edited.simulations


def test_prune_memory_and_capacity_bound_with_reasons(tmp_path):
    d = copy.deepcopy(PLAN)
    d["search"].update(target="llama-3.1-70b", tp=[1, 4], gpus=["h100-sxm"],
                       strategies=[{"strategy": "ar"}], price_per_gpu_hour={})
    d["budget"] = {"max_gpus": 4}
    plan = parse_plan(d)
    kept, rejected, n = prune(plan, ROOT, "p.yaml")
    assert n == 2 and [k.name for k in kept] == ["h100-sxm-tp4-ar"]
    (r,) = rejected
    assert r["name"] == "h100-sxm-tp1-ar" and r["stage"] == "memory" and "does not fit" in r["reason"]
    # A load far above what one 4-GPU replica could decode is pruned before simulating.
    d["workload"]["arrival"]["rate_per_s"] = 1e5
    kept, rejected, _ = prune(parse_plan(d), ROOT, "p.yaml")
    assert not kept and rejected[-1]["stage"] == "bound" and "below the load" in rejected[-1]["reason"]


def test_capacity_bound_is_above_what_a_replica_sustains():
    """The prune and the overload check rest on the bound being optimistic: a closed loop holding
    the bound's batch must not beat it."""
    d = copy.deepcopy(PLAN)
    d["search"]["scheduler"] = {"max_num_seqs": 16}
    plan = parse_plan(d)
    kept, _, _ = prune(plan, ROOT, "p.yaml")
    for k in kept:
        sc = {"name": "c", "seed": 1, "workload": {
            "requests": 300, "arrival": {"process": "closed", "concurrency": 16},
            "prompt_tokens": PLAN["workload"]["prompt_tokens"],
            "output_tokens": PLAN["workload"]["output_tokens"]},
            "deployments": [{**k.deployment, "scheduler": {"max_num_seqs": 16}}]}
        row = run_dict(sc).summary["deployments"][0]
        assert row["throughput_requests_per_s"] <= k.bound_rate_per_s, k.name
        assert row["throughput_requests_per_s"] > 0.3 * k.bound_rate_per_s, k.name  # not vacuous


def test_verdict_is_mlperf_style_on_percentiles():
    row = {"ttft_s": {"p99": 0.5, "p90": 0.2}, "tpot_s": {"p99": 0.05, "p90": 0.03},
           "e2e_s": {"p99": 3.0}}
    v = verdict(row, {"ttft_p99_s": 0.5, "tpot_p99_s": 0.04})
    assert v["slo_ratio"] == {"ttft_p99_s": 1.0, "tpot_p99_s": pytest.approx(1.25)}
    assert not v["meets_slo"] and v["worst_metric"] == "tpot_p99_s"
    assert verdict(row, {"ttft_p99_s": 0.5, "tpot_p90_s": 0.03})["meets_slo"]  # bound met exactly


def _cli(args):
    from simulator.cli.plan import register
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a group, as the real app is
    return CliRunner().invoke(app, ["plan", *map(str, args)])


def test_cli_json_is_plan_json(tmp_path):
    r = _cli([plan_file(tmp_path), "--json", "--out", tmp_path / "out", "--workers", 1])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == json.loads((tmp_path / "out" / "plan.json").read_text())
    assert r.stdout == (tmp_path / "out" / "plan.json").read_text()
    keys = {"plan", "seed", "slo", "load", "candidates_evaluated", "ranked", "best", "scenario"}
    s = json.loads(r.stdout)
    assert keys <= s.keys() and s["scenario"].endswith("best.yaml")
    assert {"name", "gpu", "tp", "replicas", "strategy", "draft", "gamma", "gpus", "cost_per_hour",
            "cost_per_million_tokens", "capacity_rate_per_s", "meets_slo", "ttft_p99_s",
            "tpot_p99_s"} <= s["best"].keys()


BAD = {
    "typo key": (lambda d: d["search"].update(stratgies=[]), "search.stratgies", "unknown key"),
    "gamma word": (lambda d: d["search"]["strategies"][1].update(gamma=["four"]),
                   "search.strategies[1].gamma", "whole number"),
    "slo type": (lambda d: d["slo"].update(tpot_p99_s="fast"), "slo.tpot_p99_s", "number"),
    "closed loop": (lambda d: d["workload"].update(arrival={"process": "closed", "concurrency": 4}),
                    "workload.arrival", "open-loop"),
    "unknown gpu": (lambda d: d["search"].update(gpus=["h100-sxm", "a100-80gb-sxm", "h900"]), "search.gpus[2]", "unknown gpu"),
    "price of a gpu not searched": (lambda d: d["search"].update(gpus=["h100-sxm"]),
                                    "search.price_per_gpu_hour", "a100-80gb-sxm"),
    "objective": (lambda d: d.update(objective="speed"), "objective", "cost_per_hour"),
    "ssd gamma auto": (lambda d: d["search"]["strategies"].append(
        {"strategy": "ssd", "draft": "llama-3.2-1b", "gamma": "auto", "acceptance": {"alpha": 0.7}}),
        "search.strategies[2]", "gamma: auto"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_plan_file_gives_a_clear_error(tmp_path, case):
    edit, field, expected = BAD[case]
    d = copy.deepcopy(PLAN)
    edit(d)
    path = plan_file(tmp_path, d)
    r = _cli([path, "--out", tmp_path / "out"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert str(path) in r.output and field in r.output and expected in r.output, r.output


def test_check_validates_plan_files(tmp_path):
    """`specsim check` knows a plan file (search:, no deployments:) and reports its own errors."""
    from simulator.cli import app
    ok = CliRunner().invoke(app, ["check", str(plan_file(tmp_path))])
    assert ok.exit_code == 0 and "ok (plan, 4 candidate designs)" in ok.stdout, ok.output
    d = copy.deepcopy(PLAN)
    d["search"]["gpus"] = ["h100-sxm", "a100-80gb-sxm", "h900"]
    bad = CliRunner().invoke(app, ["check", str(plan_file(tmp_path, d, "bad.yaml"))])
    assert bad.exit_code == 2 and "search.gpus[2]" in bad.output and "Traceback" not in bad.output


def test_search_engine_block_reaches_every_candidate():
    """search.engine (a deployment's engine: block) is shared by every candidate; absent, the
    candidates carry no engine key and take the deployment default."""
    from simulator.run.plan_space import enumerate_designs
    d = copy.deepcopy(PLAN)
    assert all("engine" not in dep for _, dep in enumerate_designs(parse_plan(d), "p.yaml"))
    d["search"]["engine"] = {"preset": "sglang"}
    designs = enumerate_designs(parse_plan(d), "p.yaml")
    assert designs and all(dep["engine"] == {"preset": "sglang"} for _, dep in designs)
    d["search"]["engine"] = {"preset": "sglang", "calibrated": "x.json"}
    with pytest.raises(Exception, match="search.engine"):
        parse_plan(d, "p.yaml")


def test_cli_table_fits_80_columns(tmp_path):
    r = _cli([plan_file(tmp_path), "--out", tmp_path / "out", "--workers", 1])
    assert r.exit_code == 0, r.output
    table = r.stdout.split("\nbest: ")[0].splitlines()
    assert max(map(len, table)) <= 80 and "…" not in r.stdout
    best = json.loads((tmp_path / "out" / "plan.json").read_text())["best"]["name"]
    assert "PASS" in r.stdout and f"best: {best} (" in r.stdout
