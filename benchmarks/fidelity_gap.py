"""Why is the real serving loop slower than the profile-composed prediction? (issue 6, fidelity)

A controlled experiment in ONE process (torch threads 1, the steady CPU allocator), over the
batch shapes the fidelity sweep runs (SHAPES: target verify q = 5 and decode q = 1, draft q = 1,
batch 1..8, mixed contexts 60..340), every variant interleaved round-robin so that machine
drift hits all of them alike. Per shape (wall-clock medians, ms):

  real         the engine's forward, called exactly as simulator/measure/real_engine.py calls it: on a
               KVCache of `concurrency` slots, slot-indexed in a shuffled order, caches holding
               real K/V, lengths rolled back to the round's start before each call
  now          the ops as the profiler used to time them, each ALONE, back to back (non_attention
               over [1, T] on rotating layer copies, attention = KV write + gather + SDPA on
               rotating caches at the batch's max context, lm_head), composed as the backend
               composes them: L * (non_attention + attention) + lm_head
  layer-now    the same composition from a whole layer timed in context (Block.forward on
               rotating layer copies and caches, the mask built once per forward): L * layer +
               lm_head. This is what the profiler's attention rows now give (simulator/measure/profiler/timing.py,
               _InContextAttention: attention = layer - non_attention)
  pred         the profile backend (ProfileLatency.forward) on the committed profile
  in-forward   the real forward re-executed piece by piece with a timer between the pieces
  pieces       (attention = KV write + gather + SDPA; non-attention = pre + post; head; fixed =
               embedding, positions, mask, bookkeeping: per forward, not per layer)

real/now > 1 at batch >= 2 and real/layer-now ~ 1 says the parts timed alone miss cost that the
forward pays; the in-forward pieces say where.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fidelity_gap.py [--rounds 20] [--profiles profiles]
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from simulator.hardware.models import MODELS
from simulator.deploy.deployments import resolve_gpu
from simulator.fidelity.config import CPU_GPU
from simulator.latency.profile import make_profile_latency
from simulator.measure.profiler import _cache_bytes, _copies, n_copies, rotation, steady_cpu_allocator
from simulator.measure.real_engine import make_pair
from simulator.config.schema import InlineGPU
from simulator.measure import torch_models as tm


def timed(fn):
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w0, time.thread_time() - c0


def real_forward_parts(model, tokens, cache, slots):
    """Transformer.forward re-executed with a timer between its pieces; returns {piece: s}."""
    t = {}
    clk = time.perf_counter
    a = clk()
    q = tokens.shape[1]
    slots_cpu, _, positions, kv_lens_cpu, kv_lens, max_kv = model.batch_positions(q, cache, slots)
    x = model.embed_tokens(tokens, positions)
    mask = tm.causal_mask(q, kv_lens, max_kv)
    t["embed+mask"] = clk() - a
    for k in ("pre", "write", "gather", "sdpa", "post"):
        t[k] = 0.0
    for i, layer in enumerate(model.layers):
        a = clk()
        qq, kk, vv = layer.pre_attention(x, positions)
        b_ = clk(); t["pre"] += b_ - a
        cache.write(i, slots_cpu, positions, kk, vv)
        c_ = clk(); t["write"] += c_ - b_
        gk, gv = cache.gather(i, slots_cpu, max_kv)
        d_ = clk(); t["gather"] += d_ - c_
        o = tm.attention(qq, gk, gv, kv_lens, mask)
        e_ = clk(); t["sdpa"] += e_ - d_
        x = layer.post_attention(x, o)
        t["post"] += clk() - e_
    cache.lens[slots_cpu] = kv_lens_cpu
    a = clk()
    model.head(x)
    t["head"] = clk() - a
    return t


class ProfilerOps:
    """The profiler's per-op measurements (simulator/measure/profiler/capture.py capture_profile), rebuilt."""

    def __init__(self, arch, seed=0):
        flush, n_rot = rotation(arch, 1, "fp32", _cache_bytes(torch, torch.device("cpu")))
        self.n_rot, self.flush = n_rot, flush
        self.m = tm.build_model(arch, n_layers=n_rot, seed=seed)
        self.blocks = itertools.cycle(list(self.m.layers))
        self.lm = itertools.cycle(_copies(self.m.lm_head.weight, flush))
        self.s = self.m.shape
        self.gen = torch.Generator().manual_seed(seed)

    def non_attention(self, T):
        x = torch.randn(1, T, self.s.hidden, generator=self.gen)
        pos = torch.arange(T)[None, :]
        return lambda: next(self.blocks).non_attention_parts(x, pos)

    def lm_head(self, T):
        x = torch.randn(1, T, self.s.hidden, generator=self.gen)
        return lambda: torch.nn.functional.linear(self.m.norm(x), next(self.lm))

    def attention(self, b, q, ctx):
        s, n = self.s, ctx + q
        n_caches = n_copies(2 * b * n * s.n_kv_heads * s.head_dim * 4, self.flush, 32)
        caches = itertools.cycle([tm.KVCache(1, b, n, s.n_kv_heads, s.head_dim) for _ in range(n_caches)])
        slots = torch.arange(b)
        pos = (ctx + torch.arange(q))[None, :].expand(b, q)
        qt = torch.randn(b, s.n_heads, q, s.head_dim, generator=self.gen)
        k = torch.randn(b, q, s.n_kv_heads, s.head_dim, generator=self.gen)
        v = torch.randn(b, q, s.n_kv_heads, s.head_dim, generator=self.gen)
        kv_lens = torch.full((b,), n, dtype=torch.long)

        def fn():
            c = next(caches)
            c.write(0, slots, pos, k, v)
            kk, vv = c.gather(0, slots, n)
            return tm.attention(qt, kk, vv, kv_lens)
        return fn

    def layer(self, b, q, ctx):
        """A whole layer (Block.forward: pre-attention, KV write, gather, SDPA with the forward's
        precomputed mask, post-attention) on rotating layer copies and rotating KV caches."""
        s, n = self.s, ctx + q
        n_caches = n_copies(2 * b * n * s.n_kv_heads * s.head_dim * 4, self.flush, 32)
        cache = tm.KVCache(n_caches, b, n, s.n_kv_heads, s.head_dim)
        cache.k.normal_(generator=self.gen), cache.v.normal_(generator=self.gen)
        layers = itertools.cycle(range(n_caches))
        slots = torch.arange(b)
        pos = (ctx + torch.arange(q))[None, :].expand(b, q)
        x = torch.randn(b, q, s.hidden, generator=self.gen)
        kv_lens = torch.full((b,), n, dtype=torch.long)
        mask = tm.causal_mask(q, kv_lens, n)
        return lambda: next(self.blocks)(x, pos, cache, next(layers), slots, kv_lens, n, "padded", mask)


SHAPES = (  # (model, batch, q, contexts): the fidelity workload's range of contexts (50..350)
    ("target", 1, 1, (200,)),
    ("target", 4, 1, (120, 190, 260, 340)),
    ("target", 8, 1, (60, 90, 120, 150, 190, 220, 260, 300)),
    ("target", 2, 5, (150, 250)),
    ("target", 4, 5, (120, 190, 260, 340)),
    ("target", 8, 5, (60, 90, 120, 150, 190, 220, 260, 300)),
    ("draft", 1, 1, (200,)),
    ("draft", 4, 1, (120, 190, 260, 340)),
    ("draft", 8, 1, (60, 90, 120, 150, 190, 220, 260, 300)),
)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--profiles", default="profiles")
    ap.add_argument("--concurrency", type=int, default=8, help="KV cache slots (the run's concurrency)")
    ap.add_argument("--repeat", type=int, default=3, help="back-to-back calls per variant and round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(steady_cpu_allocator(), "| torch threads", torch.get_num_threads())
    tgt, drf = make_pair("tiny-target", "tiny-draft", residual_scale=0.1)
    gpu = resolve_gpu(InlineGPU(name="cpu-local", **CPU_GPU), "gpu")
    lat = {m: make_profile_latency(MODELS[f"tiny-{m}"], gpu, 1, "fp32", root=Path(args.profiles))
           for m in ("target", "draft")}
    models = {"target": tgt, "draft": drf}
    ops = {m: ProfilerOps(MODELS[f"tiny-{m}"]) for m in ("target", "draft")}
    C, max_len = max(args.concurrency, 8), 192 + 160 + 8
    caches = {m: models[m].new_cache(C, max_len) for m in models}
    gen = torch.Generator().manual_seed(1)
    slots = torch.randperm(C, generator=gen)  # slots in a non-trivial order, as a real batch has
    with torch.inference_mode():  # fill every slot with real K/V (a prefill each)
        for s_ in range(C):
            ids = torch.randint(0, 4096, (1, 340), generator=gen)
            for m in models:
                models[m](ids, caches[m], torch.tensor([s_]), last_only=True)
    cases = []
    for name, b, q, ctx in SHAPES:
        ctx = np.asarray(ctx, dtype=np.int64)
        model, cache, op = models[name], caches[name], ops[name]
        sl = slots[:b]
        ids = torch.randint(0, 4096, (b, q), generator=gen)
        lens0 = torch.as_tensor(ctx)

        def real(model=model, cache=cache, sl=sl, ids=ids, lens0=lens0):
            cache.lens[sl] = lens0  # the round's rollback
            model(ids, cache, sl)

        def parts(model=model, cache=cache, sl=sl, ids=ids, lens0=lens0):
            cache.lens[sl] = lens0
            return real_forward_parts(model, ids, cache, sl)
        T, cmax = b * q, int(ctx.max())
        prof = {"na": op.non_attention(T), "attn": op.attention(b, q, cmax), "head": op.lm_head(T),
                "layer": op.layer(b, q, cmax)}
        pred = lat[name].forward(np.full(b, q), ctx, T)
        cases.append({"key": f"{name} b{b} q{q} ctx {ctx.min()}..{ctx.max()}", "L": len(model.layers),
                      "real": real, "parts": parts, "prof": prof, "pred": pred,
                      "t": {k: [] for k in ("real", "na", "attn", "head", "layer")}, "p": []})
    with torch.inference_mode():
        for c in cases:
            c["real"]()
            for f in c["prof"].values():
                f()
        for r in range(args.rounds):
            for c in cases:
                for k, f in (("real", c["real"]), *c["prof"].items()):
                    for _ in range(args.repeat):
                        c["t"][k].append(timed(f)[0])
                c["p"].append(c["parts"]())
    print(f"{args.rounds} rounds, interleaved; wall-clock medians in ms; cache {C} slots x {max_len}")
    print("real: the engine's forward; now: the profiler's ops measured now, composed as the backend "
          "composes them;\npred: the profile backend (committed profile); in-forward pieces from the "
          "instrumented forward")
    hdr = (f"{'shape':34s} {'real':>7s} {'now':>7s} {'pred':>7s} {'real/now':>8s} {'real/pred':>9s} | "
           f"{'attn in-fwd':>11s} {'attn op':>8s} {'non-attn in-fwd':>15s} {'op':>7s} {'head in-fwd':>11s} "
           f"{'op':>6s} {'fixed':>6s} | {'layer-now':>9s} {'real/layer-now':>14s} | {'pred lin/now':>12s} {'pred attn/now':>13s}")
    print(hdr)
    for c in cases:
        m = {k: float(np.median(v)) for k, v in c["t"].items()}
        L = c["L"]
        now = L * (m["na"] + m["attn"]) + m["head"]
        now_layer = L * m["layer"] + m["head"]
        pp = {k: float(np.median([p[k] for p in c["p"]])) for k in c["p"][0]}
        pred = float(c["pred"].sum())
        print(f"{c['key']:34s} {m['real'] * 1e3:7.2f} {now * 1e3:7.2f} {pred * 1e3:7.2f} {m['real'] / now:8.3f} "
              f"{m['real'] / pred:9.3f} | {(pp['write'] + pp['gather'] + pp['sdpa']) * 1e3:11.2f} "
              f"{L * m['attn'] * 1e3:8.2f} {(pp['pre'] + pp['post']) * 1e3:15.2f} {L * m['na'] * 1e3:7.2f} "
              f"{pp['head'] * 1e3:11.2f} {m['head'] * 1e3:6.2f} {pp['embed+mask'] * 1e3:6.2f} | "
              f"{now_layer * 1e3:9.2f} {m['real'] / now_layer:14.3f} | "
              f"{c['pred'][0] / (L * m['na'] + m['head']):12.3f} {c['pred'][1] / (L * m['attn']):13.3f}")


if __name__ == "__main__":
    main()
