"""The Vidur importer on the real Vidur data beside the project (../shared/data/vidur)."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS
from simulator.errors import SpecsimError
from simulator.latency.profile import ProfileLatency
from simulator.latency.profiles import SIDECAR_KEYS, load_profile
from simulator.measure.vidur_files import LAYER_OPS
from simulator.measure.vidur import import_vidur, write_vidur

from conftest import VIDUR, vidur_subset

os.environ.setdefault("OMP_NUM_THREADS", "1")

pytestmark = pytest.mark.skipif(not VIDUR.is_dir(), reason=f"Vidur data not found at {VIDUR}")


def _vidur_medians(path: Path, tp: int) -> pd.DataFrame:
    """Independent reference: the per-op medians of a Vidur mlp.csv at one tp, merged by T."""
    df = pd.read_csv(path)
    df = df[df.num_tensor_parallel_workers == tp]
    cols = [c for c in df.columns if c.endswith(".median")]
    return df.groupby("num_tokens")[cols].median()


@pytest.fixture(scope="module")
def h100_70b(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("vidur")
    src = vidur_subset(tmp, "h100/meta-llama/Llama-2-70b-hf", network="h100_dgx")
    out = tmp / "profiles"
    paths = write_vidur(src, out, command="specsim import-vidur test")
    assert len(paths) == 12  # tp 1, 2, 4, 8 as llama-2-70b-hf, llama-3.1-70b, llama-3-70b (same layers)
    return out


def test_real_h100_import_is_a_valid_profile(h100_70b):
    # Llama-2-70B's layers have Llama-3.1-70B's shapes (only the vocabulary differs).
    csv = h100_70b / "h100-sxm" / "llama-3.1-70b" / "tp4.csv"
    prof = load_profile(csv, model="llama-3.1-70b", tp=4, gpu="h100-sxm")
    meta = json.loads(csv.with_suffix(".json").read_text())
    assert set(meta) == set(SIDECAR_KEYS)
    assert meta["source"] == "vidur-import" and meta["command"] == "specsim import-vidur test"
    assert meta["attention_backend"] == "unknown (Vidur)" and meta["dtype"] == "bf16"
    assert meta["device"]["name"].startswith("NVIDIA H100")
    notes = meta["notes"]
    assert notes["vidur_model"] == "meta-llama/Llama-2-70b-hf"
    assert notes["catalogue_match"] == "layer-shape"
    assert "MIT" in notes["licence"]
    assert any(s.endswith("compute/h100/meta-llama/Llama-2-70b-hf/mlp.csv") for s in notes["source_files"])
    assert any(s.endswith("network/h100_dgx/all_reduce.csv") for s in notes["source_files"])
    times = np.array([r.median_s for r in prof.rows])
    assert np.isfinite(times).all() and (times > 0).all()
    assert {r.op for r in prof.rows} >= {"non_attention", "embedding", "allreduce"}


def test_non_attention_is_the_sum_of_vidur_ops(h100_70b):
    prof = load_profile(h100_70b / "h100-sxm" / "llama-3.1-70b" / "tp2.csv")
    ref = _vidur_medians(VIDUR / "compute/h100/meta-llama/Llama-2-70b-hf/mlp.csv", tp=2)
    na = {r.tokens: r.median_s for r in prof.select("non_attention")}
    assert sorted(na) == sorted(int(t) for t in ref.index)
    parts: dict[int, float] = {}
    names = set()
    for r in prof.rows:
        if r.op.startswith("op:"):
            assert r.batch == r.q == r.ctx == 0
            parts[r.tokens] = parts.get(r.tokens, 0.0) + r.median_s
            names.add(r.op[3:])
    assert names == set(LAYER_OPS)
    for t, v in na.items():
        assert parts[t] == pytest.approx(v, rel=1e-6)
        # and against Vidur's own columns (ms), computed independently here
        want = sum(ref.loc[t, f"time_stats.{op}.median"] for op in LAYER_OPS) * 1e-3
        assert v == pytest.approx(want, rel=1e-6, abs=1e-9)
    emb = {r.tokens: r.median_s for r in prof.select("embedding")}
    assert emb[4096] == pytest.approx(ref.loc[4096, "time_stats.emb.median"] * 1e-3)


def test_allreduce_rows_match_message_sizes(h100_70b):
    prof = load_profile(h100_70b / "h100-sxm" / "llama-3.1-70b" / "tp8.csv")
    ar = pd.read_csv(VIDUR / "network/h100_dgx/all_reduce.csv")
    ar = ar[(ar.num_workers == 8) & (ar.devices_per_node == 8)]
    rows = prof.select("allreduce")
    assert len(rows) > 100
    hidden_bytes = MODELS["llama-3.1-70b"].hidden * 2
    for r in rows[::97]:
        want = ar[ar["size"] == r.tokens * hidden_bytes]["time_stats.all_reduce.median"].median()
        assert r.median_s == pytest.approx(want * 1e-3)
    # tp 1 has no all-reduce
    assert not load_profile(h100_70b / "h100-sxm" / "llama-3.1-70b" / "tp1.csv").select("allreduce")


def test_profile_backend_runs_on_imported_data(h100_70b):
    m, g = MODELS["llama-3.1-70b"], GPUS["h100-sxm"]
    lat = ProfileLatency(h100_70b / "h100-sxm" / "llama-3.1-70b" / "tp4.csv", m, g, tp=4)
    prof = lat.profile

    def monotone(op):  # the backend takes a running maximum over tokens (noise never speeds up)
        tab = prof.table(op)
        order = np.argsort(tab["tokens"])
        return dict(zip(tab["tokens"][order], np.maximum.accumulate(tab["median_s"][order])))
    na, emb = monotone("non_attention"), monotone("embedding")
    for t in (1, 256, 4096):
        out = lat.forward(np.array([t]), np.array([0]), 0)
        assert np.isfinite(out).all() and (out >= 0).all()
        assert out[0] == pytest.approx(m.n_layers * na[t] + emb[t], rel=1e-9)


def test_model_and_gpu_mapping(tmp_path):
    src = vidur_subset(tmp_path, "a100/meta-llama/Meta-Llama-3-8B", "a100/meta-llama/Llama-2-70b-hf",
                  "a100/meta-llama/Meta-Llama-3-70B", "h100/microsoft/phi-2", "a40/microsoft/phi-2")
    profs = import_vidur(src, breakdown=False)
    seen: dict = {}
    for p in profs:
        seen.setdefault((p.meta.gpu, p.meta.notes["vidur_model"]), set()).add(
            (p.meta.model, p.meta.notes["catalogue_match"]))
    # Llama 3's data also times Llama 3.1 (the same shapes, vocabulary included)
    assert seen[("a100-80gb-sxm", "meta-llama/Meta-Llama-3-8B")] == {("llama-3-8b", "hf-id"),
                                                                     ("llama-3.1-8b", "exact")}
    assert seen[("a100-80gb-sxm", "meta-llama/Meta-Llama-3-70B")] == {("llama-3-70b", "hf-id"),
                                                                      ("llama-3.1-70b", "exact")}
    # Llama-2-70B is its own catalogue entry (by its HF id); the exact match claims llama-3.1-70b
    assert seen[("a100-80gb-sxm", "meta-llama/Llama-2-70b-hf")] == {("llama-2-70b-hf", "hf-id")}
    # phi-2 has OPT-2.7B's GEMM shapes but RoPE and a parallel block: its own entry, not OPT's
    assert seen[("h100-sxm", "microsoft/phi-2")] == {("phi-2", "hf-id")}
    a40 = [p for p in profs if p.meta.gpu == "a40"]
    assert a40 and "device" not in a40[0].meta.notes  # the A40 is a catalogue GPU
    phi = next(p for p in profs if p.meta.model == "phi-2")
    assert phi.meta.notes["vidur_shape"]["use_gated_mlp"] is False
    assert "post_attention_layernorm" not in phi.meta.notes["non_attention"]


def test_attention_rows_from_attention_csv(tmp_path):
    src = vidur_subset(tmp_path, "a100/meta-llama/Llama-2-70b-hf")
    profs = {p.meta.tp: p for p in import_vidur(src)}
    assert not profs[4].select("attention")  # attention.csv is tp 2 only
    p2 = profs[2]
    assert p2.meta.attention_backend != "unknown (Vidur)"
    att = pd.read_csv(VIDUR / "compute/a100/meta-llama/Llama-2-70b-hf/attention.csv")
    rows = {(r.batch, r.q, r.ctx): r.median_s for r in p2.select("attention")}
    dec = att[(~att.is_prefill) & (att.batch_size == 16) & (att.kv_cache_size == 1024)]
    want = sum(dec[f"time_stats.{op}.median"].median()
               for op in ("attn_input_reshape", "attn_decode", "attn_output_reshape")) * 1e-3
    assert rows[(16, 1, 1024)] == pytest.approx(want)
    pre = att[att.is_prefill & (att.prefill_chunk_size == 512) & (att.kv_cache_size == 2048)]
    want = sum(pre[f"time_stats.{op}.median"].median()
               for op in ("attn_input_reshape", "attn_prefill", "attn_output_reshape")) * 1e-3
    assert rows[(1, 512, 2048)] == pytest.approx(want)
    # breakdown rows of an attention point sum to it
    parts = sum(r.median_s for r in p2.rows if r.op.startswith("op:attn") and
                (r.batch, r.q, r.ctx) == (16, 1, 1024))
    assert parts == pytest.approx(rows[(16, 1, 1024)])
    assert all(math.isfinite(v) and v > 0 for v in rows.values())


def test_directory_without_vidur_csvs(tmp_path):
    (tmp_path / "compute").mkdir()
    with pytest.raises(SpecsimError, match=f"{tmp_path}.*no Vidur profiles.*mlp.csv"):
        import_vidur(tmp_path)
    with pytest.raises(SpecsimError, match="not a directory"):
        import_vidur(tmp_path / "missing")


def test_csv_with_missing_column(tmp_path):
    d = tmp_path / "profiling" / "compute" / "h100" / "meta-llama" / "Llama-2-7b-hf"
    d.mkdir(parents=True)
    df = pd.read_csv(VIDUR / "compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv", nrows=20)
    df.drop(columns=["time_stats.mlp_up_proj.median"]).to_csv(d / "mlp.csv", index=False)
    with pytest.raises(SpecsimError, match=r"mlp\.csv: missing column\(s\) time_stats\.mlp_up_proj\.median"):
        import_vidur(tmp_path / "profiling")
    df.drop(columns=["num_tokens"]).to_csv(d / "mlp.csv", index=False)
    with pytest.raises(SpecsimError, match=r"Llama-2-7b-hf/mlp\.csv: missing column\(s\) num_tokens"):
        import_vidur(tmp_path / "profiling")
    bad = df.copy()
    bad.loc[3, "time_stats.add.median"] = -1.0
    bad.to_csv(d / "mlp.csv", index=False)
    with pytest.raises(SpecsimError, match=r"mlp\.csv: column 'time_stats\.add\.median'"):
        import_vidur(tmp_path / "profiling")
    shutil.rmtree(d)
    d.mkdir(parents=True)
    df.rename(columns={"time_stats.add.min": "time_stats.bogus.min"}).to_csv(d / "mlp.csv", index=False)
    with pytest.raises(SpecsimError, match="unknown Vidur operator column.*bogus"):
        import_vidur(tmp_path / "profiling")


def test_engine_runs_a_scenario_on_imported_h100_profile(h100_70b):
    """End to end: the imported real H100 data times a whole scenario (issue 5's acceptance)."""
    from simulator.run.runner import run_scenario
    from simulator.config.loading import parse_scenario

    dep = {"target": "llama-3.1-70b", "gpu": "h100-sxm", "tp": 4, "strategy": "ar"}
    sc = parse_scenario({
        "name": "vidur-h100", "seed": 3,
        "workload": {"requests": 60, "arrival": {"process": "closed", "concurrency": 8},
                     "prompt_tokens": {"dist": "fixed", "value": 512},
                     "output_tokens": {"dist": "fixed", "value": 32}},
        "deployments": [
            dict(dep, name="measured", latency={"backend": "profile", "profiles_dir": str(h100_70b)}),
            dict(dep, name="roofline", latency={"backend": "roofline"}),
        ]})
    rows = {r["name"]: r for r in run_scenario(sc, Path(".")).summary["deployments"]}
    meas, roof = rows["measured"], rows["roofline"]
    assert meas["latency_source"] == "measured" and roof["latency_source"] == "roofline"
    assert meas["requests_completed"] == 60 and meas["output_tokens"] == 60 * 32
    stats = meas["latency_stats"]["target"]
    # Vidur measures every linear op: those never fall back; a few attention shapes and the
    # per-step overhead come from the calibrated roofline, and the report says how much.
    assert stats["calls"] > 0 and stats["measured_share"] > 0.7
    assert stats["fallback_lookups"]["non_attention"] == 0 == stats["fallback_lookups"]["embedding"]
    # Decode at batch 8 on a 70B TP4 shard is weight-bound: the measured step and the roofline's
    # agree on the order of magnitude, and the measured one is slower than the datasheet bound.
    tpot_m, tpot_r = meas["tpot_s"]["p50"], roof["tpot_s"]["p50"]
    assert 0.005 < tpot_m < 0.1 and tpot_m > 0.8 * tpot_r
