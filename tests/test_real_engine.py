"""The torch transformer and the real serving loop (issue 6, part 1). CPU, one torch thread."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from scipy import stats  # noqa: E402

from simulator.hardware.models import MODELS, ModelArch  # noqa: E402
from simulator.measure import real_engine as re_  # noqa: E402
from simulator.measure.real_engine import acceptance_stats, make_pair, run_real
from simulator.measure.sampling import greedy_accept, speculative_accept
from simulator.measure.torch_models import KVCache, attention, build_model, truncated_copy  # noqa: E402

torch.set_num_threads(1)


def _arch(name, family="llama", n_layers=4, vocab=128, hidden=64):
    if family == "llama":
        return ModelArch(name, "llama", n_layers, hidden, 4, 2, 16, 128, vocab, 0.0, max_position=1024)
    return ModelArch(name, "opt", n_layers, hidden, 4, 4, 16, 128, vocab, 0.0, tied_embeddings=True,
                     qkv_bias=True, gated_mlp=False, max_position=1024)


# ------------------------------------------------------------------------------ torch_models
def _naive_attention(q, k, v, kv_len):
    """Reference: one sequence, q [hq, s, d], k/v [hkv, L, d], lower-right causal over kv_len."""
    hq, s, d = q.shape
    rep = hq // k.shape[0]
    k = k[:, :kv_len].repeat_interleave(rep, 0)
    v = v[:, :kv_len].repeat_interleave(rep, 0)
    sc = q @ k.transpose(-1, -2) / d**0.5
    pos = kv_len - s + torch.arange(s)
    mask = torch.arange(kv_len)[None, :] <= pos[:, None]
    sc = sc.masked_fill(~mask, float("-inf"))
    return torch.softmax(sc, -1) @ v


def test_attention_matches_naive_reference_with_padding():
    g = torch.Generator().manual_seed(0)
    b, hq, hkv, s, L, d = 3, 4, 2, 3, 9, 8
    q = torch.randn(b, hq, s, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, L, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, L, d, generator=g, dtype=torch.float64)
    kv_lens = torch.tensor([9, 4, 3])
    out = attention(q, k, v, kv_lens)
    for j in range(b):
        ref = _naive_attention(q[j], k[j], v[j], int(kv_lens[j]))
        torch.testing.assert_close(out[j], ref)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_mixed_length_batch_equals_per_sequence_forwards(family):
    m = build_model(_arch("t", family), dtype=torch.float64, seed=1)
    g = torch.Generator().manual_seed(1)
    lens = [5, 17, 1, 30]
    c_batch = m.new_cache(4, 64)
    c_single = [m.new_cache(1, 64) for _ in lens]
    for j, L in enumerate(lens):
        pr = torch.randint(0, 128, (1, L), generator=g)
        m(pr, c_batch, torch.tensor([j]))
        m(pr, c_single[j], torch.tensor([0]))
    toks = torch.randint(0, 128, (4, 3), generator=g)
    out = m(toks, c_batch, torch.arange(4))
    assert c_batch.lens.tolist() == [L + 3 for L in lens]
    for j in range(4):
        ref = m(toks[j : j + 1], c_single[j], torch.tensor([0]))
        torch.testing.assert_close(out[j], ref[0], rtol=1e-9, atol=1e-9)
    # the per-sequence attention implementation gives the same numbers
    for c in [c_batch]:
        c.rollback_many(range(4), [3] * 4)
    m.attn_impl = "per_seq"
    out2 = m(toks, c_batch, torch.arange(4))
    torch.testing.assert_close(out, out2, rtol=1e-9, atol=1e-9)


def test_kv_cache_rollback_and_reset():
    m = build_model(_arch("t"), dtype=torch.float64, seed=2)
    g = torch.Generator().manual_seed(2)
    a = torch.randint(0, 128, (1, 6), generator=g)
    rejected = torch.randint(0, 128, (1, 4), generator=g)
    c_ = torch.randint(0, 128, (1, 3), generator=g)
    cache = KVCache(4, 2, 32, 2, 16, torch.float64, "cpu")  # layers, slots, len, kv heads, head dim
    s = torch.tensor([1])
    m(a, cache, s)
    m(rejected, cache, s)
    assert int(cache.lens[1]) == 10 and int(cache.lens[0]) == 0
    cache.rollback(1, 4)
    assert int(cache.lens[1]) == 6
    out = m(c_, cache, s)
    fresh = m.new_cache(1, 32)
    ref = m(torch.cat([a, c_], 1), fresh, torch.tensor([0]))[:, -3:]
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError):
        cache.rollback(1, 100)
    cache.reset(1)
    assert int(cache.lens[1]) == 0
    with pytest.raises(ValueError):
        m(torch.zeros((1, 40), dtype=torch.long), cache, s)  # overflow is loud


def test_chunked_prefill_equals_one_shot_prefill():
    m = build_model(_arch("t"), dtype=torch.float64, seed=3)
    pr = torch.randint(0, 128, (1, 23), generator=torch.Generator().manual_seed(3))
    c1, c2 = m.new_cache(1, 32), m.new_cache(1, 32)
    full = m(pr, c1, torch.tensor([0]), last_only=True)
    for a in range(0, 23, 8):
        last = m(pr[:, a : a + 8], c2, torch.tensor([0]), last_only=True)
    torch.testing.assert_close(full, last, rtol=1e-9, atol=1e-9)
    assert int(c2.lens[0]) == 23


def test_build_model_shapes_under_tp_and_truncation():
    arch = MODELS["llama-3.1-8b"]
    m = build_model(arch, tp=4, n_layers=1, device="meta")
    blk = m.layers[0]
    assert blk.attn.qkv.weight.shape == ((32 // 4 + 2 * 8 // 4) * 128, 4096)
    assert blk.attn.o_proj.weight.shape == (4096, 32 // 4 * 128)
    assert blk.mlp.down.weight.shape == (4096, 14336 // 4)
    m8 = build_model(arch, tp=8, n_layers=1, device="meta")
    assert m8.shape.n_kv_heads == 1
    tiny = build_model(MODELS["tiny-target"], seed=3)
    assert all(p.abs().sum() > 0 for p in tiny.parameters())
    d = truncated_copy(tiny, 2)
    assert len(d.layers) == 2 and d.lm_head is tiny.lm_head
    assert d.layers[0] is not tiny.layers[0]
    torch.testing.assert_close(d.layers[1].mlp.down.weight, tiny.layers[1].mlp.down.weight)
    # same seed, fewer layers: the first layers are identical (a truncated copy)
    short = build_model(MODELS["tiny-target"], n_layers=2, seed=3)
    torch.testing.assert_close(short.layers[1].attn.qkv.weight, tiny.layers[1].attn.qkv.weight)


# ------------------------------------------------------------------------------- sampling rule
def _rule_samples(residual, n=200_000, seed=0):
    """Run the rule on fixed p (3 positions) and q (2 positions) over a vocabulary of 6."""
    p = torch.tensor([[0.30, 0.25, 0.20, 0.10, 0.10, 0.05],
                      [0.05, 0.05, 0.10, 0.20, 0.30, 0.30],
                      [0.40, 0.10, 0.10, 0.10, 0.10, 0.20]], dtype=torch.float64)
    q = torch.tensor([[0.05, 0.10, 0.15, 0.20, 0.20, 0.30],
                      [0.30, 0.30, 0.10, 0.10, 0.10, 0.10]], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    drafts = torch.stack([torch.multinomial(q[i], n, replacement=True, generator=g) for i in range(2)], 1)
    nacc, nxt = speculative_accept(p.expand(n, 3, 6), q.expand(n, 2, 6), drafts, g, residual=residual)
    emitted = torch.cat([drafts, torch.zeros(n, 1, dtype=torch.long)], 1)
    emitted[torch.arange(n), nacc] = nxt  # row j emits drafts[:n] then nxt: position i token
    return p, nacc, emitted


def _pos_pvalues(p, nacc, emitted):
    out = []
    for i in range(3):
        rows = nacc >= i  # position i is emitted iff the first i drafts were accepted
        counts = torch.bincount(emitted[rows, i], minlength=6).numpy()
        out.append(stats.chisquare(counts, counts.sum() * p[i].numpy()).pvalue)
    return out


def test_speculative_rule_reproduces_target_distribution():
    p, nacc, emitted = _rule_samples("max0")
    pv = _pos_pvalues(p, nacc, emitted)
    assert min(pv) > 1e-3, pv
    # acceptance rate of position 1 is sum(min(p, q))
    expect = torch.minimum(p[0], torch.tensor([0.05, 0.10, 0.15, 0.20, 0.20, 0.30], dtype=torch.float64)).sum()
    assert abs((nacc >= 1).double().mean() - expect) < 0.005


def test_broken_residual_sampler_is_detected():
    """Negative control: correcting from p instead of max(0, p - q) must fail the same test."""
    p, nacc, emitted = _rule_samples("p")
    pv = _pos_pvalues(p, nacc, emitted)
    assert min(pv) < 1e-6, pv


def test_greedy_accept_rule():
    logits = torch.full((2, 4, 5), -1.0)
    for j, seq in enumerate([[1, 2, 3, 4], [0, 2, 2, 2]]):
        for i, t in enumerate(seq):
            logits[j, i, t] = 5.0
    n, nxt = greedy_accept(logits, torch.tensor([[1, 2, 0], [1, 2, 2]]))
    assert n.tolist() == [2, 0] and nxt.tolist() == [3, 0]
    n, nxt = greedy_accept(logits, torch.tensor([[1, 2, 3], [0, 2, 2]]))
    assert n.tolist() == [3, 3] and nxt.tolist() == [4, 2]


# -------------------------------------------------------------------------------- the engine
def _pair(family="llama", vocab=128, noise=0.0, seed=0):
    t, d = _arch("tt", family, 4, vocab), _arch("td", family, 1, vocab)
    return make_pair(t, d, dtype=torch.float64, seed=seed, residual_scale=0.3, draft_noise=noise)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_greedy_speculative_decoding_is_lossless(family):
    tgt, drf = _pair(family)
    pl = [7, 3, 12, 1, 9, 5, 20]
    ol = [9, 14, 1, 11, 6, 13, 8]
    kw = dict(prompt_lens=pl, output_lens=ol, concurrency=3, temperature=0.0, seed=5, warmup=False)
    ar = run_real(tgt, None, mode="ar", **kw)
    sd = run_real(tgt, drf, mode="sd", gamma=3, **kw)
    for a, s, n in zip(ar.tokens, sd.tokens, ol):
        assert len(a) == len(s) == n
        assert a.tolist() == s.tolist()
    acc = sd.rounds.accepted
    assert (acc < 3).any() and (acc > 0).any(), "rollback and acceptance both exercised"
    assert sd.iterations.batch.max() == 3 and sd.iterations.batch.min() >= 1
    assert (sd.iterations.ctx_lens.map(lambda c: len(set(c))) > 1).any(), "mixed context lengths"


def test_records_are_consistent_closed_loop():
    tgt, drf = _pair()
    pl, ol = [4, 8, 2, 6, 5, 3], [5, 2, 7, 1, 6, 4]
    r = run_real(tgt, drf, prompt_lens=pl, output_lens=ol, concurrency=2, mode="sd", gamma=2,
                 temperature=1.0, seed=1, warmup=False)
    q = r.requests
    assert q.output_tokens.tolist() == ol
    assert (q.arrival[:2] == 0).all()
    fins = set(q.finish.round(12))
    assert all(round(a, 12) in fins for a in q.arrival[2:]), "later arrivals happen at finish times"
    assert (q.first_token >= q.admitted).all() and (q.admitted >= q.arrival).all()
    assert (q.finish >= q.first_token).all()
    em = r.rounds.groupby("request").emitted.sum().reindex(range(6), fill_value=0)
    assert (em.to_numpy() == np.array(ol) - 1).all()
    assert (r.rounds.emitted <= r.rounds.accepted + 1).all()
    assert r.iterations.batch.max() <= 2
    it = r.iterations
    assert (it[["t_draft", "t_target", "t_prefill_target"]].to_numpy() >= 0).all()
    s = acceptance_stats(r.rounds, 2)
    assert 0 <= s["alpha"] <= 1 and len(s["per_position"]) == 2


def _exact_marginals(tgt, prompt, T=1.0):
    """Exact distributions of generated tokens 2 and 3 under the target (AR at temperature T)."""
    V = tgt.shape.vocab
    c = tgt.new_cache(V * V, len(prompt) + 3)
    slots = torch.arange(V * V)
    pr = torch.as_tensor(prompt)[None].expand(V * V, -1)
    p1 = torch.softmax(tgt(pr, c, slots)[:, -1] / T, -1)[0]
    t1 = torch.arange(V).repeat_interleave(V)
    t2 = torch.arange(V).repeat(V)
    p2 = torch.softmax(tgt(t1[:, None], c, slots)[:, -1] / T, -1)  # p(t2 | t1), rows (t1, .)
    p2_given_t1 = p2.view(V, V, V)[:, 0]  # [t1, t2]
    p3 = torch.softmax(tgt(t2[:, None], c, slots)[:, -1] / T, -1).view(V, V, V)  # [t1, t2, t3]
    m2 = (p1[:, None] * p2_given_t1).sum(0)
    joint12 = p1[:, None] * p2_given_t1
    m3 = (joint12[:, :, None] * p3).sum((0, 1))
    return m2.numpy(), m3.numpy()


def _sd_token_counts(tgt, drf, prompt, n_req, V):
    out = run_real(tgt, drf, prompt_lens=[len(prompt)] * n_req, output_lens=[3] * n_req,
                   prompts=[prompt] * n_req, concurrency=128, mode="sd", gamma=2, temperature=1.0,
                   seed=11, warmup=False)
    toks = np.stack(out.tokens)
    return (np.bincount(toks[:, 1], minlength=V), np.bincount(toks[:, 2], minlength=V),
            acceptance_stats(out.rounds, 2)["alpha"])


def test_temperature_one_sd_output_matches_target_distribution(monkeypatch):
    V = 16
    tgt, drf = _pair(vocab=V, noise=0.5, seed=4)
    prompt = np.array([3, 1, 4, 1, 5], dtype=np.int64)
    m2, m3 = _exact_marginals(tgt, prompt)
    n_req = 1024
    c2, c3, alpha = _sd_token_counts(tgt, drf, prompt, n_req, V)
    assert 0.2 < alpha < 0.95, alpha  # the test has rejections to correct
    p_ok = min(stats.chisquare(c2, n_req * m2).pvalue, stats.chisquare(c3, n_req * m3).pvalue)
    assert p_ok > 1e-3
    # negative control: the same engine with a residual sampler that corrects from p
    broken = lambda p, q, x, g: speculative_accept(p, q, x, g, residual="p")  # noqa: E731
    monkeypatch.setattr(re_, "speculative_accept", broken)
    b2, b3, _ = _sd_token_counts(tgt, drf, prompt, n_req, V)
    p_bad = min(stats.chisquare(b2, n_req * m2).pvalue, stats.chisquare(b3, n_req * m3).pvalue)
    assert p_bad < 1e-4, (p_ok, p_bad)
