"""ProfileLatency: exact at measured points, monotone log-space interpolation between them, the
composition of a forward pass, mixed batches, fallback outside the grid and its accounting, and
running from the committed cpu-local profiles."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS
from simulator.errors import SpecsimError
from simulator.latency.base import ATTENTION, COMMUNICATION, LINEAR, OVERHEAD
from simulator.latency.profile import ProfileLatency, make_profile_latency
from simulator.latency.roofline import RooflineLatency
from simulator.latency.profiles import Profile, ProfileMeta, ProfileRow, load_profile, write_profile

REPO = Path(__file__).resolve().parents[1]
ARCH = MODELS["tiny-draft"]  # 2 layers
GPU = GPUS["h100-sxm"]
TOKENS = [1, 2, 4, 8, 16, 64, 256]
BATCHES, QS, CTXS = [1, 2, 4, 8], [1, 2, 4], [0, 16, 64, 256]
PREFILL_Q = [32, 128]


def na_time(t):  # synthetic, monotone, curved
    return 1e-4 + 2e-6 * t


def attn_time(b, q, c):
    return 1e-5 + 1e-8 * b * q * (c + q) + 1e-7 * b


def _meta(**kw):
    d = dict(model="tiny-draft", tp=1, dtype="fp32",
             device={"name": "test", "memory_bytes": 1, "driver": None, "cuda": None, "torch": None},
             gpu="h100-sxm", attention_backend="synthetic-paged", mode="eager", date="2026-11-23",
             grid="synthetic", command="test", specsim_version="0.1.0", step_overhead_s=0.004,
             forward_overhead_s=3e-4, source="specsim-profiler", notes="")
    d.update(kw)
    return ProfileMeta(**d)


def _rows(non_monotone=False):
    rows = []
    for t in TOKENS:
        v = na_time(t)
        if non_monotone and t == 4:
            v = na_time(1) * 0.9  # a noisy dip below the point before it
        rows += [ProfileRow("non_attention", 0, 0, 0, t, v, v, v, 5),
                 ProfileRow("embedding", 0, 0, 0, t, 1e-6 * t, 1e-6 * t, 1e-6 * t, 5),
                 ProfileRow("lm_head", 0, 0, 0, t, 5e-5 + 1e-6 * t, 5e-5 + 1e-6 * t, 5e-5 + 1e-6 * t, 5)]
    for b in BATCHES:
        for q in QS:
            for c in CTXS:
                v = attn_time(b, q, c)
                rows.append(ProfileRow("attention", b, q, c, b * q, v, v, v, 5))
    for q in PREFILL_Q:
        for c in CTXS:
            v = attn_time(1, q, c)
            rows.append(ProfileRow("attention", 1, q, c, q, v, v, v, 5))
    return rows


@pytest.fixture
def profile(tmp_path):
    path = write_profile(Profile(_meta(), _rows()), tmp_path)
    return load_profile(path)


def _backend(profile, **kw):
    return ProfileLatency(profile, ARCH, GPU, 1, "fp32", **kw)


def test_reproduces_measured_points_exactly(profile):
    be = _backend(profile)
    L = ARCH.n_layers
    for b in BATCHES:
        for q in QS:
            for c in CTXS:
                out = be.forward(np.full(b, q), np.full(b, c), b * q)
                T = b * q
                if T not in TOKENS:
                    continue
                assert out[LINEAR] == pytest.approx(L * na_time(T) + 1e-6 * T + 5e-5 + 1e-6 * T, rel=1e-12)
                assert out[ATTENTION] == pytest.approx(L * attn_time(b, q, c), rel=1e-12)
                assert out[COMMUNICATION] == 0 and out[OVERHEAD] == 3e-4
    assert be.step_overhead_s == 0.004
    assert be.stats["fallback_calls"] == 0 and be.stats["measured_share"] == 1.0


def test_interpolates_log_linearly_and_monotonically(profile):
    be = _backend(profile)
    L = ARCH.n_layers
    # Between T = 16 and 64: a straight line in log-log.
    t = 32
    w = (math.log(t) - math.log(16)) / (math.log(64) - math.log(16))
    want = math.exp((1 - w) * math.log(na_time(16)) + w * math.log(na_time(64)))
    out = be.forward(np.array([t]), np.array([0]), 0)
    emb = math.exp((1 - w) * math.log(16e-6) + w * math.log(64e-6))
    assert out[LINEAR] == pytest.approx(L * want + emb, rel=1e-12)
    # Dense sweeps are monotone and pass through the measured points.
    lin = [be.forward(np.array([T]), np.array([0]), 0)[LINEAR] for T in range(1, 129)]
    assert np.all(np.diff(lin) >= 0)
    att_c = [be.forward(np.full(4, 2), np.full(4, c), 0)[ATTENTION] for c in range(0, 257)]
    assert np.all(np.diff(att_c) >= 0)
    assert att_c[64] == pytest.approx(L * attn_time(4, 2, 64), rel=1e-12)
    assert L * attn_time(4, 2, 16) < att_c[40] < L * attn_time(4, 2, 64)
    att_b = [be.forward(np.full(b, 1), np.full(b, 100), 0)[ATTENTION] for b in range(1, 9)]
    assert np.all(np.diff(att_b) > 0)
    assert be.stats["fallback_calls"] == 0


def test_noisy_dip_is_made_monotone(tmp_path):
    prof = load_profile(write_profile(Profile(_meta(), _rows(non_monotone=True)), tmp_path))
    be = _backend(prof)
    f = lambda T: be.forward(np.array([T]), np.array([0]), 0)[LINEAR]
    assert f(4) >= f(2) >= f(1)
    assert f(8) == pytest.approx(ARCH.n_layers * na_time(8) + 8e-6)


def test_mixed_batch_groups_by_q(profile, tmp_path):
    be = _backend(profile)
    L = ARCH.n_layers
    q = np.array([1, 1, 1, 4, 4])
    ctx = np.array([10, 20, 60, 16, 16])
    out = be.forward(q, ctx, 3 + 8)
    # paged backend: each group at its mean context
    want = be._attention_uniform(3, 1, 30)[0] + attn_time(2, 4, 16)
    assert out[ATTENTION] == pytest.approx(L * want)
    # a backend that pads to the longest sequence: groups at their max context
    padded = load_profile(write_profile(Profile(_meta(attention_backend="torch-sdpa-padded"), _rows()),
                                        tmp_path / "padded"))
    bp = _backend(padded)
    assert bp.ctx_stat == "max"
    assert bp.forward(q, ctx, 0)[ATTENTION] == pytest.approx(
        L * (bp._attention_uniform(3, 1, 60)[0] + attn_time(2, 4, 16)))
    assert bp._attention_uniform(3, 1, 60)[0] > be._attention_uniform(3, 1, 30)[0]
    # prefill chunks are measured at batch 1 only: two chunks are timed one by one
    out = be.forward(np.array([128, 128]), np.array([16, 64]), 1)
    assert out[ATTENTION] == pytest.approx(L * 2 * be._attention_uniform(1, 128, 40)[0])
    assert be.stats["fallback_calls"] == 0


def test_outside_grid_uses_the_fallback_and_counts_it(profile):
    fb = RooflineLatency(ARCH, GPU, 1, "fp32")
    be = _backend(profile, fallback=fb)
    L = ARCH.n_layers
    be.forward(np.full(4, 1), np.full(4, 64), 4)
    assert be.stats["fallback_calls"] == 0
    # T = 512 > 256 (four 128-token prefill chunks): non_attention from the fallback, scaled
    # to agree with the T = 256 point; the chunks' attention is on the grid (batch 1, one by one)
    out = be.forward(np.full(4, 128), np.zeros(4, dtype=int), 0)
    edge = na_time(256)
    ratio = (fb.forward(np.array([512]), np.array([0]), 0)[LINEAR]
             / fb.forward(np.array([256]), np.array([0]), 0)[LINEAR])
    assert out[LINEAR] == pytest.approx(L * edge * ratio + be._per_token("embedding", be._emb, 512)[0], rel=1e-9)
    # batch 32 > 8 and ctx 1000 > 256: attention from the fallback
    out = be.forward(np.full(32, 1), np.full(32, 1000), 32)
    assert out[ATTENTION] > L * attn_time(8, 1, 256)
    st = be.stats
    assert st["calls"] == 3 and st["fallback_calls"] == 2
    assert 0 < st["measured_share"] < 1
    assert st["fallback_lookups"]["non_attention"] == 1 and st["fallback_lookups"]["attention"] == 1
    # continuity at the grid's edge
    a = be.forward(np.array([256]), np.array([0]), 0)[LINEAR]
    b = be.forward(np.array([257]), np.array([0]), 0)[LINEAR]
    assert a <= b < a * 1.01


def test_without_fallback_outside_grid_is_an_error(profile):
    be = ProfileLatency(profile, ARCH, None, 1, "fp32")
    with pytest.raises(SpecsimError, match="outside the profile's grid"):
        be.forward(np.array([1000]), np.array([0]), 0)


def test_mismatches_are_errors(profile):
    with pytest.raises(SpecsimError, match="measured in fp32.*asks for bf16"):
        ProfileLatency(profile, ARCH, GPU, 1, "bf16")
    with pytest.raises(SpecsimError, match="not 'tiny-target'"):
        ProfileLatency(profile, MODELS["tiny-target"], GPU, 1, "fp32")
    with pytest.raises(SpecsimError, match="not tp=2"):
        ProfileLatency(profile, ARCH, GPU, 2, "fp32")


def test_make_profile_latency_finds_or_explains(profile, tmp_path):
    be = make_profile_latency(ARCH, GPU, 1, "fp32", root=tmp_path, overrides={"step_overhead_s": 0.01})
    assert be.source == "measured" and be.step_overhead_s == 0.004  # the profile's own value wins
    assert be.fallback.params.step_overhead_s == 0.01
    with pytest.raises(SpecsimError, match=r"deployments\[0\].latency.backend: 'profile' needs .*tp1.csv"):
        make_profile_latency(ARCH, GPUS["a100-80gb-sxm"], 1, "fp32", root=tmp_path, field="deployments[0].latency")
    with pytest.raises(SpecsimError, match="unknown roofline parameter"):
        make_profile_latency(ARCH, GPU, 1, "fp32", root=tmp_path, overrides={"bogus": 1.0})


@pytest.mark.parametrize("model", ["tiny-target", "tiny-draft"])
def test_committed_cpu_profiles(model):
    """The committed cpu-local profiles load, cover the grid the fidelity experiment needs, and
    time its batches from measured points only."""
    path = REPO / "profiles" / "cpu-local" / model / "tp1.csv"
    prof = load_profile(path, model=model, tp=1, gpu="cpu-local")
    attn = prof.table("attention")
    assert attn["batch"].max() >= 32 and attn["ctx"].max() >= 2048 and attn["q"].max() >= 512
    assert set(range(1, 9)) & set(attn["q"].tolist()) >= {1, 2, 4, 6, 8}
    assert prof.table("non_attention")["tokens"].max() >= 4096
    assert prof.meta.forward_overhead_s is not None
    be = ProfileLatency(prof, MODELS[model], None, 1, "fp32")
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = int(rng.integers(1, 33))
        q = int(rng.choice([1, 5]))
        out = be.forward(np.full(b, q), rng.integers(16, 2000, b), b * q)
        assert np.all(np.isfinite(out)) and out.sum() > 0
    out = be.forward(np.array([1, 1, 512]), np.array([100, 900, 0]), 3)
    assert be.stats["fallback_calls"] == 0 and be.stats["measured_share"] == 1.0


@pytest.mark.parametrize("attention_backend", ["synthetic-paged", "torch-sdpa-padded"])
def test_uniform_fast_path_equals_forward(tmp_path, attention_backend):
    """The engine prices decode steps through forward_uniform (no per-sequence q array); it
    must equal forward() for both context statistics (mean for paged, max for padded), inside
    and outside the grid (where the fallback's attention is anchored)."""
    path = write_profile(Profile(_meta(attention_backend=attention_backend), _rows()), tmp_path)
    fb = RooflineLatency(ARCH, GPU, 1, "fp32")
    rng = np.random.default_rng(0)
    for n, q in [(1, 1), (3, 2), (8, 4), (40, 3), (6, 9)]:
        ctx = rng.integers(1, 600, n)
        a, b = ProfileLatency(load_profile(path), ARCH, GPU, 1, "fp32", fb), \
            ProfileLatency(load_profile(path), ARCH, GPU, 1, "fp32", fb)
        np.testing.assert_array_equal(a.forward_uniform(n, q, ctx, int(ctx.sum()), n * q),
                                      b.forward(np.full(n, q), ctx, n * q))
        assert a.stats["calls"] == b.stats["calls"] == 1
        assert a.stats["fallback_calls"] == b.stats["fallback_calls"]


@pytest.mark.parametrize("attention_backend", ["synthetic-paged", "torch-sdpa-padded"])
def test_mixed_fast_path_equals_forward(tmp_path, attention_backend):
    """Mixed steps (decodes plus prefill chunks) are priced through forward_mixed, which groups
    rows by query length without building arrays; it must equal forward() on the rows it stands
    for, bit for bit: catches a chunk that replaces its group instead of joining it (a chunk of
    q_dec tokens not merged with the decodes) or the shift of a draft's first forward forgotten."""
    path = write_profile(Profile(_meta(attention_backend=attention_backend), _rows()), tmp_path)
    fb = RooflineLatency(ARCH, GPU, 1, "fp32")
    rng = np.random.default_rng(1)
    cases = [(0, 1, [512], [0], 0), (3, 2, [2], [40], 0), (5, 1, [300, 1, 64], [0, 10, 128], 0),
             (8, 4, [700, 4], [100, 7], 1), (40, 6, [33], [900], 1), (2, 1, [1, 1], [5, 500], 0)]
    for n, q_dec, pre_q, pre_ctx, shift in cases:
        ctx = rng.integers(1, 600, n)
        a, b = (ProfileLatency(load_profile(path), ARCH, GPU, 1, "fp32", fb) for _ in range(2))
        n_logits = n * q_dec + len(pre_q)
        got = a.forward_mixed(q_dec, ctx, int(ctx.sum()), pre_q, pre_ctx, n_logits, shift)
        want = b.forward(np.concatenate([np.full(n, q_dec), pre_q]).astype(np.int64),
                         np.concatenate([ctx - shift, pre_ctx]).astype(np.int64), n_logits)
        np.testing.assert_array_equal(got, want)
        assert a.stats == b.stats


@pytest.mark.parametrize("attention_backend", ["synthetic-paged", "torch-sdpa-padded"])
def test_decode_steps_equal_the_sum_of_forwards(tmp_path, attention_backend):
    """A draft's steps through decode_steps (from the context sum under the mean statistic)
    equal latency.base's definition, forward() over ctx + start + j summed from zero, bit for
    bit, with the same statistics: catches the start offset dropped, a step too few, the mean
    taken over the wrong count (n_logits for rows) or the stats not counted per forward."""
    path = write_profile(Profile(_meta(attention_backend=attention_backend), _rows()), tmp_path)
    fb = RooflineLatency(ARCH, GPU, 1, "fp32")
    rng = np.random.default_rng(2)
    for n, steps, n_logits, start in [(1, 1, 1, 0), (3, 4, 3, 1), (8, 5, 16, 0), (40, 2, 40, 1),
                                      (6, 7, 6, 3)]:
        ctx = rng.integers(1, 600, n)
        a, b = (ProfileLatency(load_profile(path), ARCH, GPU, 1, "fp32", fb) for _ in range(2))
        got = a.decode_steps(np.zeros(n, np.int64) if attention_backend == "synthetic-paged" else ctx,
                             steps, n_logits, int(ctx.sum()), start)
        want = sum((b.forward(np.ones(n, np.int64), ctx + (start + j), n_logits)
                    for j in range(steps)), np.zeros(4))
        np.testing.assert_array_equal(np.asarray(got), want)
        assert a.stats == b.stats and a.stats["calls"] == steps
