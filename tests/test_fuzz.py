"""Property tests (hypothesis) of the `specsim check` / `specsim run` contract over generated
scenario files, valid and broken:

- never a traceback: every invocation exits 0 or 2 (2 with a one-line-or-so user error);
- on a valid run: every request completes exactly once with its length, the KV cache is never
  over capacity AT ANY STEP, latencies are finite and non-negative, TTFT <= E2E.

The CLI runs in-process (typer's CliRunner) for speed; per-step engine invariants are checked by
wrapping two engine methods for the duration of each invocation (`engine_invariants`).

Layout of this file: the input strategies; the property (`check_contract`); the tests (strict:
no xfail; rel15.md lists what each found before its fix).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis.control import currently_in_test_context, event as _event
from hypothesis import strategies as st
from typer.testing import CliRunner

# The CLI app (public) and the two engine classes whose steps are checked (internals).
from simulator.cli import app
from simulator.engine.replica import Replica
from simulator.engine.simulation import Simulation

# Shrinking a failure costs minutes on a busy 2-core host: off by default (the failure is still
# printed, unshrunk); SPECSIM_FUZZ_SHRINK=1 turns it on when you want a minimal reproducer.
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + (
    [Phase.shrink] if os.environ.get("SPECSIM_FUZZ_SHRINK") == "1" else [])
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    phases=_PHASES, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TIMEOUT_S = 20  # per CLI invocation: a hang is a failure, not a stuck suite

# ---- valid scenarios ----------------------------------------------------------------------------
# A toy model on a toy GPU (ideal backend, 1 s per forward) whose KV cache holds kv_tokens, so
# that preemption and near-full caches are common; and the catalogue's 8B on an H100 (roofline).
TOY = {"name": "toy", "n_layers": 1, "hidden": 8, "n_heads": 1, "n_kv_heads": 1, "head_dim": 8,
       "ffn": 8, "vocab": 8, "params": 1e6}
TOY_DRAFT = {**TOY, "name": "toy-draft", "params": 2e5}
TOY_WEIGHTS_BYTES, TOY_KV_BYTES = 1184, 32  # 592 params in bf16; 2 x 1 layer x 8 dims x 2 bytes


def toy_gpu(kv_tokens: int, with_draft: bool) -> dict:
    n = 2 if with_draft else 1
    hbm = n * (TOY_WEIGHTS_BYTES + TOY_KV_BYTES * kv_tokens) + TOY_KV_BYTES
    return {"name": "toy-gpu", "hbm_gb": hbm / 1e9, "bandwidth_tbps": 1.0, "bf16_tflops": 2e-6}


lengths = st.one_of(
    st.builds(lambda v: {"dist": "fixed", "value": v}, st.integers(1, 60)),
    st.builds(lambda a, b: {"dist": "uniform", "min": min(a, b), "max": max(a, b)},
              st.integers(1, 60), st.integers(1, 60)),
    st.builds(lambda m, s: {"dist": "lognormal", "mean": m, "std": s, "min": 1, "max": 80},
              st.floats(2, 50), st.floats(0, 30)),
)
arrivals = st.one_of(
    st.builds(lambda r: {"process": "poisson", "rate_per_s": r}, st.floats(0.05, 50)),
    st.builds(lambda r, b: {"process": "gamma", "rate_per_s": r, "burstiness": b},
              st.floats(0.05, 50), st.floats(0.1, 5)),
    st.builds(lambda r: {"process": "constant", "rate_per_s": r}, st.floats(0.05, 50)),
    st.builds(lambda c: {"process": "closed", "concurrency": c}, st.integers(1, 12)),
)


def longest(w: dict) -> int:
    """The largest prompt + output the workload's length specs allow."""
    top = [s.get("value", s.get("max")) for s in (w["prompt_tokens"], w["output_tokens"])]
    return sum(top)


@st.composite
def deployments(draw, i: int, longest: int) -> dict:
    strategy = draw(st.sampled_from(["ar", "sd", "ssd"]))
    toy = draw(st.booleans())
    gamma = draw(st.integers(1, 8))
    d = {"name": f"d{i}", "strategy": strategy, "replicas": draw(st.integers(1, 3)),
         "router": draw(st.sampled_from(["round_robin", "least_outstanding"]))}
    if toy:
        # A roomy cache, or one just large enough for the longest request (tight: where the
        # fit check and the engine's reservation, context + query + lookahead, can disagree).
        kv = draw(st.one_of(st.integers(16, 400),
                            st.integers(longest, longest + 2 * gamma + 2).map(lambda k: max(k, 16))))
        d.update(target=TOY, gpu=toy_gpu(kv, strategy == "sd"), latency={"backend": "ideal"},
                 activation_reserve_gb=0, gpu_memory_utilization=1.0)
    else:
        d.update(target="llama-3.1-8b", gpu="h100-sxm")
        if draw(st.booleans()):
            d["latency"] = {"backend": "roofline",
                            "params": {"step_overhead_s": draw(st.floats(0, 0.01)),
                                       "compute_efficiency": draw(st.floats(0.1, 1.0))}}
    if strategy != "ar":
        d.update(draft=TOY_DRAFT if toy else "llama-3.2-1b", gamma=gamma,
                 acceptance={"alpha": draw(st.floats(0.05, 1.0))})
    if strategy == "ssd":
        d["ssd"] = {"fanout": {"policy": "uniform", "f": draw(st.integers(1, 4))},
                    "batch_policy": draw(st.sampled_from(["all_or_nothing", "per_sequence"])),
                    "backup": draw(st.sampled_from(["jit", "fast"]))}
        if draw(st.booleans()):
            d["handshake_s"] = draw(st.floats(0, 1e-3))
        if toy:  # a dedicated draft GPU holding its weights, tree reserve and KV
            d["draft_gpu"] = {"name": "toy-draft-gpu", "hbm_gb": 4, "bandwidth_tbps": 1.0,
                              "bf16_tflops": 2e-6}
    d["scheduler"] = {"max_num_seqs": draw(st.integers(1, 32)),
                      "max_num_batched_tokens": draw(st.integers(16, 2048)),
                      "chunked_prefill": draw(st.booleans()),
                      "block_size": draw(st.sampled_from([1, 4, 16]))}
    return d


@st.composite
def valid_scenarios(draw) -> dict:
    n_dep = draw(st.integers(1, 2))
    w = {"requests": draw(st.integers(1, 30)), "arrival": draw(arrivals),
         "prompt_tokens": draw(lengths), "output_tokens": draw(lengths)}
    d = {"name": "fuzz", "seed": draw(st.integers(0, 2**32 - 1)), "workload": w,
         "deployments": [draw(deployments(i, longest(w))) for i in range(n_dep)]}
    if draw(st.booleans()):
        d["slo"] = {"ttft_s": draw(st.floats(0.01, 10)), "tpot_s": draw(st.floats(0.001, 1))}
    if draw(st.integers(0, 3)) == 0:  # a sweep of 1-3 points over the arrival's own parameter
        closed = w["arrival"]["process"] == "closed"
        values = (st.integers(1, 8) if closed else st.floats(0.1, 20))
        d["sweep"] = {"param": "concurrency" if closed else "rate_per_s",
                      "values": draw(st.lists(values, min_size=1, max_size=3, unique=True))}
    return copy.deepcopy(d)


# ---- broken scenarios ---------------------------------------------------------------------------
NASTY = [math.nan, math.inf, -math.inf, 0, -1, -1e-300, 1.5, 1e308, 2**64 + 1, -(2**63), "",
         "[/x]", "[bold]x", "é\u202eΩ", None, True, [], {}, {"x": 1}, [[[[1]]]]]
# Size fields: huge values must be refused up front by the named limits (requests, replicas,
# rate x duration_s), never start a run that allocates or loops for minutes.
SIZE_KEYS = {"requests", "replicas", "concurrency", "duration_s", "values", "rate_per_s"}
NASTY_SIZE = [math.nan, math.inf, -math.inf, 0, -1, 1.5, 1e308, 2**64 + 1, 10**7, "", "[/x]",
              None, True, [], {}]


def leaf_paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from leaf_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from leaf_paths(v, prefix + (i,))


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def set_path(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


@st.composite
def broken_scenarios(draw) -> dict:
    d = draw(valid_scenarios())
    for _ in range(draw(st.integers(1, 3))):
        paths = list(leaf_paths(d))
        numeric = [p for p in paths if _is_number(_get(d, p))]
        path = draw(st.sampled_from(numeric if numeric and draw(st.booleans()) else paths))
        kind = draw(st.sampled_from(["value", "value", "unknown_key", "delete"]))
        if kind == "value":
            pool = NASTY_SIZE if path[-1] in SIZE_KEYS else NASTY
            # A copy: a shared NASTY dict or list mutated by a later step would leak into other
            # examples and could be made to contain itself (endless recursion in leaf_paths).
            set_path(d, path, copy.deepcopy(draw(st.sampled_from(pool))))
        elif kind == "unknown_key":
            parent = d
            for p in path[:-1]:
                parent = parent[p]
            if isinstance(parent, dict):
                parent[draw(st.sampled_from(["[/x]", "gama", "é", "requests_", "1"]))] = 1
        else:
            parent = d
            for p in path[:-1]:
                parent = parent[p]
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
    return d


@st.composite
def broken_texts(draw) -> bytes:
    """File-level breakage: duplicated keys, non-UTF-8 bytes, a BOM, deep nesting, non-mappings."""
    text = yaml.safe_dump(draw(valid_scenarios()), allow_unicode=True, sort_keys=False)
    kind = draw(st.sampled_from(["dup", "latin1", "bom", "deep", "scalar", "garbage"]))
    if kind == "dup":
        return (text + "seed: 7\n").encode()
    if kind == "latin1":
        return text.replace("name: fuzz", "name: fuzz\ndescription: café").encode("latin-1")
    if kind == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if kind == "deep":
        depth = draw(st.integers(200, 4000))
        return ("workload: " + "[" * depth + "]" * depth + "\n").encode()
    if kind == "scalar":
        return draw(st.sampled_from([b"42\n", b"- 1\n- 2\n", b"", b"~\n", b"'[/x]'\n"]))
    return draw(st.binary(max_size=64))


# ---- the property -------------------------------------------------------------------------------
class InvariantBroken(AssertionError):
    pass


@contextlib.contextmanager
def engine_invariants():
    """Check, after every engine step: KV blocks in use never above capacity, no request both
    waiting and running, nobody past its length; and at the end of every simulation: every
    request completed exactly once with exactly its output length."""
    apply, run = Replica._apply, Simulation.run

    def checked_apply(self, n_dec, outcome, now):
        emitted = apply(self, n_dec, outcome, now)
        if self.max_blocks_used > self.blocks_total:
            raise InvariantBroken(f"KV {self.max_blocks_used} of {self.blocks_total} blocks")
        running = self.running_ids()
        if len(set(running)) != len(running) or set(running) & set(self.waiting):
            raise InvariantBroken("a request is running twice, or running and waiting")
        if (self.st.generated > self.st.out).any():
            raise InvariantBroken("a request generated more than its length")
        return emitted

    def checked_run(self):
        rec = run(self)
        if self.completed != self.req.n or not np.isfinite(rec.finish).all():
            bad = int((~np.isfinite(rec.finish)).sum())
            raise InvariantBroken(f"{self.completed} completions for {self.req.n} requests, "
                                  f"{bad} without a finite finish time")
        if not (self.st.generated == self.st.out).all():
            raise InvariantBroken("a request completed with a length other than its own")
        return rec

    Replica._apply, Simulation.run = checked_apply, checked_run
    try:
        yield
    finally:
        Replica._apply, Simulation.run = apply, run


@contextlib.contextmanager
def time_limit(seconds: int):
    def on_alarm(*_):
        raise TimeoutError(f"specsim ran past {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def event(msg: str) -> None:
    """Tally an outcome for --hypothesis-show-statistics (ignored outside hypothesis tests)."""
    if currently_in_test_context():
        _event(msg)


def invoke(args: list[str]):
    with engine_invariants(), time_limit(TIMEOUT_S):
        return CliRunner().invoke(app, args)


def describe(result) -> str:
    exc = result.exception
    if exc is None or isinstance(exc, SystemExit):
        return f"exit {result.exit_code}: {result.output[-400:]}"
    return f"exit {result.exit_code}: {type(exc).__name__}: {exc}"[:600]


def check_outputs(out_dir: Path, n_requests: int | None) -> None:
    """A run the tool accepted: per deployment and sweep point, every request of requests.csv
    completed (finite times), exactly once, as many as the workload asked for (when known), with
    finite non-negative latencies, TTFT <= E2E, and the KV peak within capacity."""
    summary = json.loads((out_dir / "summary.json").read_text())
    table = pd.read_csv(out_dir / "requests.csv")
    for row in summary["deployments"]:
        name = row["name"]
        t = table[table.deployment == name]
        for param, value in row.get("sweep", {}).items():
            t = t[np.isclose(t[param].astype(float), float(value))]
            name += f" @{param}={value}"
        ids = t.request_id.tolist()
        assert len(ids) == len(set(ids)) and len(ids) > 0, f"{name}: request ids repeat or none"
        if n_requests is not None:
            assert len(ids) == n_requests, f"{name}: {len(ids)} requests, expected {n_requests}"
        assert row["requests_completed"] == len(ids), \
            f"{name}: {row['requests_completed']} of {len(ids)} requests completed"
        assert row["output_tokens"] == int(t.output_tokens.sum()), f"{name}: output_tokens"
        assert (t.output_tokens >= 1).all(), f"{name}: a request with no output token"
        assert row["kv_peak_fraction"] <= 1.0, f"{name}: kv_peak_fraction {row['kv_peak_fraction']}"
        for col in ("ttft_s", "e2e_s", "first_token_s", "finish_s"):
            v = t[col].to_numpy(float)
            assert np.isfinite(v).all() and (v >= 0).all(), f"{name}: {col} not finite >= 0"
        assert (t.ttft_s <= t.e2e_s + 1e-12).all(), f"{name}: TTFT > E2E"
        tpot = t.tpot_s.to_numpy(float)
        assert (np.isnan(tpot) == (t.output_tokens.to_numpy() == 1)).all(), f"{name}: TPOT"
        assert (tpot[~np.isnan(tpot)] >= 0).all(), f"{name}: negative TPOT"
        assert np.isfinite(row["throughput_tokens_per_s"]) and row["throughput_tokens_per_s"] > 0, \
            f"{name}: throughput {row['throughput_tokens_per_s']}"


def check_contract(content: bytes, n_requests: int | None) -> None:
    """`specsim check` then (if it accepted) `specsim run` on one scenario file: exit 0 or 2,
    never an exception; a run's outputs satisfy the invariants above."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.yaml"
        path.write_bytes(content)
        res = invoke(["check", str(path)])
        assert res.exit_code in (0, 2) and isinstance(res.exception, (SystemExit, type(None))), \
            "check: " + describe(res)
        event(f"check exit {res.exit_code}")
        if res.exit_code != 0:
            event("check: " + res.output.strip().splitlines()[-1][:70] if res.output.strip() else "")
            return
        out = Path(tmp) / "out"
        res = invoke(["run", str(path), "--out", str(out), "--json"])
        assert res.exit_code in (0, 2) and isinstance(res.exception, (SystemExit, type(None))), \
            "run: " + describe(res)
        event(f"run exit {res.exit_code}")
        if res.exit_code == 0:  # accepted: the results must be sane
            check_outputs(out, n_requests)


def dump(d: dict) -> bytes:
    return yaml.safe_dump(d, allow_unicode=True, sort_keys=False).encode()


# The issue's "71 of 70 blocks": one SD request alone nearly filling a toy cache of 100 tokens
# (block_size 1) with gamma 8. The fit check sizes it as 92 + 8 = 100 tokens; the engine reserves
# context + 2 gamma + 1 per decoding row, up to 91 + 17 = 108.
KV_TIGHT = {"name": "kv-tight", "seed": 1,
            "workload": {"requests": 1, "arrival": {"process": "closed", "concurrency": 1},
                         "prompt_tokens": {"dist": "fixed", "value": 50},
                         "output_tokens": {"dist": "fixed", "value": 42}},
            "deployments": [{"name": "sd", "strategy": "sd", "target": TOY, "draft": TOY_DRAFT,
                             "gpu": toy_gpu(100, True), "latency": {"backend": "ideal"},
                             "activation_reserve_gb": 0, "gpu_memory_utilization": 1.0,
                             "gamma": 8, "acceptance": {"alpha": 1.0},
                             "scheduler": {"block_size": 1}}]}


# ---- the tests (the contract) --------------------------------------------------------------------
@SETTINGS
@given(valid_scenarios())
@example(KV_TIGHT)
def test_valid_scenarios_keep_invariants(d):
    check_contract(dump(d), d["workload"]["requests"])


@SETTINGS
@given(broken_scenarios())
def test_broken_scenarios_exit_0_or_2(d):
    check_contract(dump(d), None)


@SETTINGS
@given(broken_texts())
def test_broken_files_exit_0_or_2(content):
    check_contract(content, None)


# Fixed reproducers of the issue's list that the generators above reach only rarely.
ISSUE_CASES = {
    "markup-deployment-name": {"deployments[0].name": "[/x]"},
    "negative-seed": {"seed": -1},
    "duration-inf": {"workload.requests": None, "workload.duration_s": math.inf},
    "burstiness-1e200": {"workload.arrival": {"process": "gamma", "rate_per_s": 4,
                                              "burstiness": 1e200}},
    "requests-2^64+1": {"workload.requests": 2**64 + 1},
    "hbm-inf": {"deployments[0].gpu": {"name": "g", "hbm_gb": math.inf, "bandwidth_tbps": 3,
                                       "bf16_tflops": 900}},
    "latency-param-nan": {"deployments[0].latency": {"backend": "roofline",
                                                     "params": {"step_overhead_s": math.nan}}},
    "latency-param-inf": {"deployments[0].latency": {"backend": "roofline",
                                                     "params": {"forward_overhead_s": math.inf}}},
    "sweep-concurrency-0.5": {"workload.arrival": {"process": "closed", "concurrency": 1},
                              "sweep": {"param": "concurrency", "values": [0.5]}},
}


def issue_case(overrides: dict) -> dict:
    d = {"name": "issue", "seed": 1,
         "workload": {"requests": 5, "arrival": {"process": "poisson", "rate_per_s": 4},
                      "prompt_tokens": {"dist": "fixed", "value": 64},
                      "output_tokens": {"dist": "fixed", "value": 8}},
         "deployments": [{"name": "d", "target": "llama-3.1-8b", "gpu": "h100-sxm"}]}
    for dotted, value in overrides.items():
        obj, parts = d, dotted.replace("[0]", ".0").split(".")
        for p in parts[:-1]:
            obj = obj[int(p)] if p.isdigit() else obj[p]
        if value is None:
            obj.pop(parts[-1])
        else:
            obj[parts[-1]] = value
    return d


@pytest.mark.parametrize("case", sorted(ISSUE_CASES))
def test_issue_inputs_exit_0_or_2_with_sane_results(case):
    d = issue_case(ISSUE_CASES[case])
    check_contract(dump(d), d["workload"].get("requests"))
