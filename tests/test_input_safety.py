"""Bad user input gives one clear error (exit 2) naming the file and field, never a traceback and
never a silently wrong run (issue 15). Each case is an input from the issue's list; the comment
says what happened before the fix.

The CLI runs in-process (typer's CliRunner); `cli()` fails the test on any exception other than
the CLI's own exit.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from simulator import __version__
from simulator.cli import app
from simulator.config.workload_schema import MAX_REPLICAS, MAX_REQUESTS

from conftest import ROOT

BASE = {"name": "safe", "seed": 1,
        "workload": {"requests": 4, "arrival": {"process": "poisson", "rate_per_s": 4},
                     "prompt_tokens": {"dist": "fixed", "value": 64},
                     "output_tokens": {"dist": "fixed", "value": 8}},
        "deployments": [{"name": "d", "target": "llama-3.1-8b", "gpu": "h100-sxm"}]}


def cli(*args) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    exc = res.exception
    assert exc is None or isinstance(exc, SystemExit), \
        f"traceback: {type(exc).__name__}: {exc}"
    return res.exit_code, res.output


def scenario(tmp_path: Path, **edits) -> Path:
    """BASE with dotted-path edits (`workload.requests=...`, `d0.gpu=...` for deployments[0])."""
    d = copy.deepcopy(BASE)
    for dotted, value in edits.items():
        obj, parts = d, dotted.split("__")
        for p in parts[:-1]:
            obj = obj["deployments"][0] if p == "d0" else obj[p]
        key = parts[-1]
        if value is None:
            obj.pop(key)
        else:
            obj[key] = value
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def refused(path: Path, *needles: str, command: str = "check") -> str:
    code, out = cli(command, path) if command == "check" else cli("run", path, "--out",
                                                                  path.parent / "out")
    assert code == 2, out
    flat = " ".join(out.split())
    for n in needles:
        assert n in flat, f"{n!r} not in {flat!r}"
    return flat


# ---- non-finite numbers: named errors (before: runs with 0 completions, or a traceback) -------
@pytest.mark.parametrize("edit,field", [
    ({"d0__latency": {"backend": "roofline", "params": {"step_overhead_s": float("nan")}}},
     "deployments[0].latency.params.step_overhead_s"),
    ({"d0__latency": {"backend": "roofline", "params": {"forward_overhead_s": float("inf")}}},
     "deployments[0].latency.params.forward_overhead_s"),
    ({"d0__gpu": {"name": "g", "hbm_gb": float("inf"), "bandwidth_tbps": 3, "bf16_tflops": 900}},
     "deployments[0].gpu.hbm_gb"),
    ({"workload__requests": None, "workload__duration_s": float("inf")}, "workload.duration_s"),
    ({"slo": {"ttft_s": float("nan")}}, "slo.ttft_s"),
])
def test_non_finite_numbers_are_named(tmp_path, edit, field):
    refused(scenario(tmp_path, **edit), field, "finite number")


def test_non_finite_handshake_is_named(tmp_path):
    dep = {"name": "d", "strategy": "ssd", "target": "llama-3.1-8b", "draft": "llama-3.2-1b",
           "gpu": "h100-sxm", "gamma": 4, "acceptance": {"alpha": 0.7},
           "handshake_s": float("inf")}
    refused(scenario(tmp_path, deployments=[dep]), "deployments[0].handshake_s", "finite number")


# ---- sizes: refused up front with the limit named (before: tracebacks, hangs) ------------------
@pytest.mark.parametrize("edit,needles", [
    ({"workload__requests": 2**64 + 1}, ["workload.requests", f"{MAX_REQUESTS}"]),
    # One past the limit (not 1e9: a regression would then allocate tens of GB before failing).
    ({"workload__requests": MAX_REQUESTS + 1}, ["workload.requests", f"{MAX_REQUESTS}"]),
    ({"d0__replicas": 1_000_000}, ["deployments[0].replicas", f"{MAX_REPLICAS}"]),
    ({"workload__arrival": {"process": "gamma", "rate_per_s": 4, "burstiness": 1e200}},
     ["workload.arrival.burstiness", "100"]),
    ({"workload__requests": None, "workload__duration_s": MAX_REQUESTS / 4 + 1},
     ["duration_s", "limit"]),
    ({"workload__output_tokens": {"dist": "fixed", "value": 2**64}}, ["output_tokens.value"]),
], ids=["requests-2^64+1", "requests-limit+1", "replicas-1e6", "burstiness-1e200",
        "duration-past-limit", "tokens-2^64"])
def test_sizes_past_the_limits_are_refused_up_front(tmp_path, edit, needles):
    refused(scenario(tmp_path, **edit), *needles)


# ---- negative seeds (before: ValueError from numpy's SeedSequence) ------------------------------
def test_negative_seed_in_the_file(tmp_path):
    refused(scenario(tmp_path, seed=-1), "seed", "greater than or equal to 0")


def test_negative_seed_flag(tmp_path):
    code, out = cli("run", scenario(tmp_path), "--out", tmp_path / "o", "--seed", "-1")
    assert code == 2 and "seed: -1" in out


# ---- names printed literally (before: rich MarkupError traceback) ------------------------------
@pytest.mark.parametrize("edit", [{"d0__target": "[/x]"}, {"d0__gpu": "[bold]g[/x]"},
                                  {"name": "[/x]"}])
def test_markup_in_names_is_printed_literally(tmp_path, edit):
    value = next(iter(edit.values()))
    flat = refused(scenario(tmp_path, **edit))
    assert value in flat


# ---- files: bad bytes, BOM, deep nesting, duplicated keys ---------------------------------------
def test_non_utf8_scenario(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_bytes(yaml.safe_dump(BASE).replace("name: safe", "name: safe\ndescription: café")
                  .encode("latin-1"))
    refused(p, "s.yaml", "not UTF-8", "0xe9")


def test_bom_scenario_is_read(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(BASE).encode())
    code, out = cli("check", p)
    assert code == 0, out


@pytest.mark.parametrize("text", ["workload: " + "[" * 5000 + "]" * 5000 + "\n",
                                  "{" + '"a": {' * 5000 + "}" * 5001 + "\n"])
def test_deep_nesting_is_refused(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    refused(p, "s.yaml", "nested more than")


def test_duplicated_key_names_key_and_line(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("seed: 3\n" + yaml.safe_dump(BASE, sort_keys=False))
    refused(p, "s.yaml", "line 3", "key 'seed' appears twice", "first on line 1")


def test_yaml_merge_keys_still_work(tmp_path):
    """`<<: *anchor` with an overriding key is not a duplicate (scenarios/ use it)."""
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({k: v for k, v in BASE.items() if k != "deployments"})
                 + "deployments:\n  - &a {name: a, target: llama-3.1-8b, gpu: h100-sxm}\n"
                 + "  - {<<: *a, name: b}\n")
    code, out = cli("check", p)
    assert code == 0, out


def _profile_copy(tmp_path: Path) -> Path:
    root = tmp_path / "profiles"
    shutil.copytree(ROOT / "profiles" / "cpu-local", root / "cpu-local")
    return root


def _cpu_scenario(tmp_path: Path, root: Path) -> Path:
    sc = yaml.safe_load((ROOT / "scenarios" / "cpu-tiny.yaml").read_text())
    sc["workload"]["requests"] = 4
    sc["deployments"] = sc["deployments"][:1]
    sc["deployments"][0]["latency"] = {"backend": "profile", "profiles_dir": str(root)}
    p = tmp_path / "cpu.yaml"
    p.write_text(yaml.safe_dump(sc))
    return p


def test_profile_with_bom_is_read(tmp_path):
    """Before: 'line 1: missing column(s) op' (the header's first cell read as '\\ufeffop')."""
    root = _profile_copy(tmp_path)
    csv = root / "cpu-local" / "tiny-target" / "tp1.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())
    code, out = cli("run", _cpu_scenario(tmp_path, root), "--out", tmp_path / "o", "--json")
    assert code == 0, out


@pytest.mark.parametrize("name", ["tp1.csv", "tp1.json"])
def test_non_utf8_profile(tmp_path, name):
    root = _profile_copy(tmp_path)
    f = root / "cpu-local" / "tiny-target" / name
    f.write_bytes(f.read_bytes() + b"\xff\n")
    refused(_cpu_scenario(tmp_path, root), name, "not UTF-8", "0xff", command="run")


def _calibration(tmp_path: Path, edit) -> Path:
    root = tmp_path / "profiles"
    (root / "h100-sxm").mkdir(parents=True)
    path = root / "h100-sxm" / "calibration.json"
    text = (ROOT / "profiles" / "h100-sxm" / "calibration.json").read_text()
    path.write_bytes(edit(text))
    return scenario(tmp_path, d0__latency={"backend": "calibrated", "profiles_dir": str(root)})


@pytest.mark.parametrize("edit,needles", [
    (lambda t: (t + "\xe9").encode("latin-1"), ["calibration.json", "not UTF-8"]),
    (lambda t: json.dumps({**json.loads(t), "params": {**json.loads(t)["params"],
                                                       "compute_efficiency": 0}}).encode(),
     ["params.compute_efficiency", "(0, 1]"]),
    (lambda t: json.dumps({**json.loads(t), "params": {**json.loads(t)["params"],
                                                       "compute_efficiency": 1e9}}).encode(),
     ["params.compute_efficiency", "(0, 1]"]),
    (lambda t: json.dumps({**json.loads(t), "fitted": 3}).encode(), ["key 'fitted' is 3"]),
    (lambda t: ("[" * 5000 + "]" * 5000).encode(), ["calibration.json", "nested more than"]),
])
def test_bad_calibration_files(tmp_path, edit, needles):
    """Before: UnicodeDecodeError, ZeroDivisionError, accepted 1e9, TypeError, RecursionError."""
    refused(_calibration(tmp_path, edit), *needles, command="run")


# ---- traces -------------------------------------------------------------------------------------
def _trace(tmp_path: Path, body: bytes) -> Path:
    p = tmp_path / "t.csv"
    p.write_bytes(body)
    return p


def test_trace_shorter_than_the_request_count(tmp_path):
    """Before: 40 requests from 3 rows, cycled silently."""
    t = _trace(tmp_path, b"out\n5\n6\n7\n")
    spec = {"dist": "trace", "path": str(t), "column": "out"}
    refused(scenario(tmp_path, workload__output_tokens=spec), "workload.output_tokens",
            "4 requests but the trace has 3 rows", "repeat: true")
    code, out = cli("check", scenario(tmp_path, workload__output_tokens={**spec, "repeat": True}))
    assert code == 0, out


@pytest.mark.parametrize("body,needles", [
    (b"out\n", ["workload.output_tokens", "no rows"]),  # before: 0-token requests, exit 0
    (b"out\n5\n1e19\n5\n5\n", ["workload.output_tokens", "data row 2", "1e+19"]),  # before: -2^63
    (b"out\n5\n2.5\n5\n5\n", ["workload.output_tokens", "data row 2"]),
    (b"out\n5\n\xe96\n5\n5\n", ["workload.output_tokens", "t.csv", "not UTF-8"]),
])
def test_bad_length_traces(tmp_path, body, needles):
    spec = {"dist": "trace", "path": str(_trace(tmp_path, body)), "column": "out"}
    refused(scenario(tmp_path, workload__output_tokens=spec), *needles)


def test_header_only_arrival_trace(tmp_path):
    """Before: ValueError 'zero-size array to reduction operation'."""
    spec = {"process": "trace", "path": str(_trace(tmp_path, b"arrived_at\n"))}
    refused(scenario(tmp_path, workload__arrival=spec), "workload.arrival.path", "no rows")


# ---- sweeps -------------------------------------------------------------------------------------
@pytest.mark.parametrize("values,needle", [([0.5], "values[0]: concurrency 0.5"),
                                           ([1, 1.5], "values[1]: concurrency 1.5"),
                                           ([2, 2], "values[1]: 2 repeats values[0]")])
def test_bad_concurrency_sweeps(tmp_path, values, needle):
    """Before: 0.5 ran at concurrency 0 (nothing completes); [1, 1.5] ran two identical points."""
    p = scenario(tmp_path, workload__arrival={"process": "closed", "concurrency": 1},
                 sweep={"param": "concurrency", "values": values})
    refused(p, "sweep", needle)


def test_rate_sweep_over_trace_arrivals(tmp_path):
    """Before: the rate was ignored; every point identical."""
    t = _trace(tmp_path, b"arrived_at\n0\n1\n2\n3\n")
    p = scenario(tmp_path, workload__arrival={"process": "trace", "path": str(t)},
                 sweep={"param": "rate_per_s", "values": [1, 2]})
    refused(p, "rate_per_s", "trace", "speedup")


def test_version_flag():
    code, out = cli("--version")
    assert code == 0 and out.strip() == f"specsim {__version__}"


def test_gamma_auto_with_alpha_1_runs(tmp_path):
    """Before: `check` accepted it and `run` failed with 'alpha must be in (0, 1), got 1'. With
    every drafted token accepted, tokens per FLOP rise with gamma: the range's end is chosen."""
    dep = {"name": "sd", "strategy": "sd", "target": "llama-3.1-8b", "draft": "llama-3.2-1b",
           "gpu": "h100-sxm", "gamma": "auto", "acceptance": {"alpha": 1.0},
           "latency": {"backend": "ideal"}}
    code, out = cli("run", scenario(tmp_path, deployments=[dep]), "--out", tmp_path / "o", "--json")
    assert code == 0, out
    row = json.loads((tmp_path / "o" / "summary.json").read_text())["deployments"][0]
    assert row["config"]["gamma"] == 16, row["config"]


def test_block_size_larger_than_the_cache_is_named(tmp_path):
    """Before: 'does not fit ... weights 16.1 GB + ... exceed usable 72.0 GB' (self-contradicting,
    block_size never named)."""
    p = scenario(tmp_path, d0__scheduler={"block_size": 10**9})
    flat = refused(p, "deployments[0].scheduler.block_size: 1000000000 tokens per block")
    assert "exceed usable" not in flat


def test_one_line_per_mistake(tmp_path):
    """Before: an 'invalid scenario' header line, then one indented line per mistake."""
    p = scenario(tmp_path, seed="x", d0__replicas=0)
    code, out = cli("check", p)
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 2, out
    assert all(line.startswith(f"error: {p}: ") for line in lines), out
    assert "seed:" in lines[0] and "deployments[0].replicas:" in lines[1]


def test_profile_refuses_to_overwrite_without_force(tmp_path):
    """Before: `specsim profile` with its default --out overwrote the bundled CPU profile (and
    scenarios/cpu-tiny.yaml fell from 70 to 4 tok/s without a word). Refused before capturing."""
    root = _profile_copy(tmp_path)
    csv = root / "cpu-local" / "tiny-draft" / "tp1.csv"
    before = csv.read_bytes()
    code, out = cli("profile", "--model", "tiny-draft", "--grid", "quick", "--out", root)
    assert code == 2 and "exists" in out and "--force" in out, out
    assert csv.read_bytes() == before


def test_torch_commands_say_how_to_add_torch(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    for command in (["fidelity"], ["profile", "--model", "tiny-draft"]):
        code, out = cli(*command)
        assert code == 2 and "pip install -e '.[torch]'" in " ".join(out.split()), out


@pytest.mark.parametrize("edit,needle", [
    ({"d0__target": "llama-3.1-8"}, "unknown model 'llama-3.1-8' (did you mean 'llama-3.1-8b'?)"),
    ({"d0__gpu": "h100-sxn"}, "unknown gpu 'h100-sxn' (did you mean 'h100-sxm'?)"),
    ({"d0__gama": 4}, "deployments[0].gama: unknown key (did you mean 'gamma'?)"),
])
def test_misspelt_names_get_a_suggestion(tmp_path, edit, needle):
    refused(scenario(tmp_path, **edit), needle)


def test_a_key_of_another_section_is_not_suggested_as_itself(tmp_path):
    """Before: `objective:` in a scenario said "unknown key (did you mean 'objective'?)", the very
    key it refused (the suggestions were drawn from every section of every schema)."""
    flat = refused(scenario(tmp_path, objective="cost"), "objective: unknown key")
    assert "did you mean 'objective'" not in flat


def test_plan_and_scenario_files_given_to_the_wrong_command(tmp_path):
    """Before: `specsim run` on a plan file printed six errors, four suggesting the key itself."""
    plan = ROOT / "scenarios" / "plan-70b-chat.yaml"
    code, out = cli("run", plan, "--out", tmp_path / "out")
    flat = " ".join(out.split())
    assert code == 2 and "this is a plan file" in flat and "specsim plan" in flat, out
    assert len(out.strip().splitlines()) <= 2  # one message (wrapped at most once)
    code, out = cli("plan", scenario(tmp_path), "--out", tmp_path / "p")
    assert code == 2 and "this is a scenario file" in " ".join(out.split()), out


def test_draft_with_another_vocabulary_is_warned_about(tmp_path):
    """Before: a Qwen draft for a Llama target ran without a word (151,936 vs 128,256 tokens)."""
    dep = {"name": "sd", "strategy": "sd", "target": "llama-3.1-8b", "draft": "qwen2.5-0.5b",
           "gpu": "h100-sxm", "gamma": 4, "acceptance": {"alpha": 0.7}}
    p = scenario(tmp_path, deployments=[dep])
    code, out = cli("check", p)
    flat = " ".join(out.split())
    assert code == 0 and "warning:" in flat and "deployments[0].draft: qwen2.5-0.5b" in flat, out
    code, out = cli("run", p, "--out", tmp_path / "o", "--json")
    assert code == 0, out
    row = json.loads((tmp_path / "o" / "summary.json").read_text())["deployments"][0]
    assert "tokenizer" in row["config"]["warnings"][0]


def test_bom_in_trace_and_calibration_is_read(tmp_path):
    """A UTF-8 BOM (as Excel and Notepad write) is not part of the first column's name or key."""
    t = _trace(tmp_path, b"\xef\xbb\xbfout\n5\n6\n7\n8\n")
    code, out = cli("check", scenario(tmp_path, workload__output_tokens={
        "dist": "trace", "path": str(t), "column": "out"}))
    assert code == 0, out
    p = _calibration(tmp_path, lambda text: b"\xef\xbb\xbf" + text.encode())
    code, out = cli("check", p)
    assert code == 0, out
