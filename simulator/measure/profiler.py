"""`specsim profile`: measure a model's per-layer operator times on this machine into a profile.

The model is built in plain torch (simulator/torch_models.py) at the shapes ONE GPU holds under
tensor parallelism `tp`, with random weights. Per grid point: warm-up calls, then timed repeats
(CUDA events on a GPU, perf_counter on a CPU; no profiler attached), stored as median/p10/p90.
A separate torch.profiler pass over a few points gives the per-operator breakdown
(`op:<parent op>/<aten op>` rows: device self time on a GPU, CPU self time on a CPU).

What each op times (the split mirrors Block.forward, so the parts add up to a layer):
  non_attention  Block.non_attention_parts over [1, T] tokens (norm, QKV, RoPE, O, norm, MLP, adds)
  attention      KV-cache write of the q new tokens + gather of ctx+q positions + attention() with
                 the lower-right causal mask, for `batch` sequences (the padded torch implementation),
                 measured IN CONTEXT: its marginal cost inside a layer (see below)
  embedding      embed_tokens over T tokens;  lm_head: final norm + [T, hidden] x [hidden, vocab/tp]
  forward        the whole model's forward (all layers, logits for every position), timed directly
The fixed cost of a forward beyond its parts (Python dispatch, bookkeeping) is the median residual
direct - composed over the smallest forward points (T <= 4), clipped at 0 (`forward_overhead_s`).

Attention in context. Timed alone, back to back, the attention op finds its working buffers
(gathered K/V, scores) hot in the caches, and the non-attention op never pays for evicting the
dirty data attention leaves behind; in a forward both happen, and the parts timed alone summed to
~10% less than the real forward at batch >= 2 (benchmarks/fidelity_gap.py). So each attention
point times a whole layer (Block.forward's pieces: pre_attention, Block.attend with the mask
built once per forward as Transformer.forward does, post_attention) paired back to back with
the layer's non-attention work on the same [b, q] tokens, on rotating layer copies and KV caches,
and the attention row is median(layer - non_attention): what attention adds to a layer. It is
floored at the median time of the attention op itself inside the layer (timing noise can push
the difference below it at small contexts). Composed, L * (non_attention + attention) is then
the layer as a forward runs it. On a GPU the same pairing times with CUDA events.
With tp > 1 and one device, all-reduce rows are derived from the datasheet interconnect (noted).
"""
from __future__ import annotations

import datetime as _dt
import itertools
import math
import os
import platform
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

import simulator
from simulator.hardware.models import BYTES_PER_DTYPE, MODELS, ModelArch
from simulator.hardware.gpus import GPUS
from simulator.errors import SpecsimError
from simulator.latency.roofline import RooflineLatency
from simulator.latency.profiles import Profile, ProfileMeta, ProfileRow

ATTENTION_BACKEND = "torch-sdpa-padded"  # gather to the batch's max context, masked (torch_models)


@dataclass(frozen=True)
class Grid:
    """The points a capture measures, and how hard it measures each."""

    name: str
    tokens: tuple[int, ...]  # non_attention, embedding, lm_head
    batches: tuple[int, ...]
    decode_q: tuple[int, ...]  # query tokens per sequence for decode/verify (1..gamma+1)
    prefill_q: tuple[int, ...]  # prefill chunk lengths, measured at batch 1
    contexts: tuple[int, ...]  # cached tokens, for both
    forward_points: tuple[tuple[int, int, int], ...]  # (batch, q, ctx), on the grid: overhead fit
    validation_points: tuple[tuple[int, int, int], ...]  # forward points off the grid: validation
    breakdown_tokens: tuple[int, ...]
    breakdown_attention: tuple[tuple[int, int, int], ...]
    warmup: int = 2
    min_repeats: int = 5
    max_repeats: int = 50
    budget_s: float = 0.2  # timed seconds per point beyond min_repeats
    profiler_iters: int = 3
    passes: int = 3  # timed passes over the whole grid (see _Timer.measure_points)

    def attention_points(self) -> list[tuple[int, int, int]]:
        pts = [(b, q, c) for b in self.batches for q in self.decode_q for c in self.contexts]
        pts += [(1, q, c) for q in self.prefill_q for c in self.contexts]
        return sorted(set(pts))

    def describe(self) -> dict:
        d = asdict(self)
        d["forward_points"] = [list(p) for p in self.forward_points]
        d["validation_points"] = [list(p) for p in self.validation_points]
        d["breakdown_attention"] = [list(p) for p in self.breakdown_attention]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _geo(lo: int, hi: int, steps_per_octave: int) -> tuple[int, ...]:
    """Integers from lo to hi spaced evenly in log (2 or 3 points per doubling)."""
    n = int(round(math.log2(hi / lo) * steps_per_octave)) + 1
    return tuple(sorted({int(round(v)) for v in np.geomspace(lo, hi, n)}))


GRIDS: dict[str, Grid] = {
    # Seconds on a CPU for a tiny model: tests and smoke runs.
    "quick": Grid("quick", tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), batches=(1, 2, 4, 8),
                  decode_q=(1, 2, 4), prefill_q=(32, 128), contexts=(0, 16, 64, 256),
                  forward_points=((1, 1, 16), (2, 4, 16), (4, 1, 64), (1, 128, 0)),
                  validation_points=((4, 4, 100), (6, 1, 40), (1, 48, 0)),
                  breakdown_tokens=(8, 128), breakdown_attention=((4, 1, 64),),
                  warmup=1, min_repeats=9, max_repeats=18, budget_s=0.05, profiler_iters=2, passes=3),
    # A few minutes on a CPU for a tiny model: the committed cpu-local profiles.
    "medium": Grid("medium", tokens=_geo(1, 4096, 2), batches=(1, 2, 4, 8, 16, 32),
                   decode_q=(1, 2, 4, 6, 8), prefill_q=(16, 32, 64, 128, 256, 512),
                   contexts=(0, 64, 128, 256, 512, 1024, 2048),
                   forward_points=((1, 1, 64), (2, 1, 128), (1, 4, 64), (8, 1, 256), (4, 4, 512),
                                   (32, 1, 1024), (1, 128, 0), (1, 512, 512)),
                   validation_points=((3, 1, 100), (12, 1, 700), (24, 5, 1500), (6, 3, 300), (1, 200, 300)),
                   breakdown_tokens=(1, 64, 1024), breakdown_attention=((8, 1, 512), (1, 256, 0)),
                   warmup=1, min_repeats=16, max_repeats=48, budget_s=0.2, passes=8),
    # A GPU: T up to 16k, batches up to 256, contexts up to 32k, prefill chunks up to 2048.
    "default": Grid("default", tokens=_geo(1, 16384, 2), batches=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                    decode_q=(1, 2, 4, 6, 8), prefill_q=(128, 256, 512, 1024, 2048),
                    contexts=(0, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
                    forward_points=((1, 1, 128), (2, 1, 256), (1, 4, 128), (8, 1, 1024), (16, 4, 2048),
                                    (64, 1, 1024), (1, 2048, 0), (128, 1, 4096)),
                    validation_points=((3, 1, 700), (48, 1, 3000), (24, 5, 1500), (96, 3, 6000),
                                       (1, 1500, 3000)),
                    breakdown_tokens=(1, 64, 1024, 8192),
                    breakdown_attention=((32, 1, 4096), (1, 2048, 0)),
                    warmup=3, min_repeats=10, max_repeats=100, budget_s=0.2, passes=2),
}
# The medium grid with dense contexts where attention time steps on a small CPU (its place moves
# between captures): the committed cpu-local profiles used by `specsim fidelity`.
GRIDS["medium-densectx"] = replace(
    GRIDS["medium"], name="medium-densectx", decode_q=(1, 2, 4, 5, 6, 8),
    contexts=(0, 32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 1024, 2048),
    min_repeats=12, max_repeats=36, budget_s=0.12, passes=6)


# ---------------------------------------------------------------------------------------- timing
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def steady_cpu_allocator() -> str:
    """Make glibc keep freed memory instead of returning it to the OS, process-wide.

    By default glibc serves large blocks (past a threshold that moves with the allocation history)
    with fresh mmap pages, so a tensor of a few MB can cost a page fault per 4 KiB on every call
    and an op's time depends on what ran before it (measured here: the same attention call 6 ms
    or 45 ms). Fixing the mmap threshold at its 32 MiB maximum and never trimming makes repeated
    forwards reuse their memory. A real CPU engine compared with a CPU profile should call this too.
    Returns a description for the profile's notes.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        int_max = 2**31 - 1  # mallopt takes a C int: a larger value would wrap (to 0: trim always)
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) == 1 and libc.mallopt(M_TRIM_THRESHOLD, int_max) == 1
    except (OSError, AttributeError):
        ok = False
    return ("glibc mallopt: mmap threshold 32 MiB, no trimming (steady_cpu_allocator)" if ok
            else "default allocator (mallopt unavailable)")


class _Timer:
    """Time of fn() per call: CUDA events on a GPU; on a CPU, the calling thread's CPU time when
    torch runs single-threaded (immune to other processes time-slicing a shared machine, which
    otherwise doubles some samples), else wall time (perf_counter)."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.type == "cuda"
        single = torch.get_num_threads() == 1
        self.clock = time.thread_time if single else time.perf_counter
        self.description = ("CUDA events per call" if self.cuda else
                            "time.thread_time per call (CPU time of the single torch thread)" if single
                            else "time.perf_counter per call (wall time)")

    def stamp(self):
        """A point in time on this timer's clock (a recorded CUDA event on a GPU)."""
        if self.cuda:
            e = self.torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return self.clock()

    def spans(self, stamps: list) -> list[float]:
        """Seconds between successive stamps."""
        if self.cuda:
            stamps[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(stamps, stamps[1:])]
        return [b - a for a, b in zip(stamps, stamps[1:])]

    def measure(self, fn: Callable[[], object], warmup: int, min_repeats: int, max_repeats: int,
                budget_s: float) -> list:
        """Per-call times of fn(); or, when fn has a `sample(timer)` method (a point that times
        several things per sample, e.g. _InContextAttention), the tuples it returns."""
        torch = self.torch
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        times: list = []
        spent = 0.0
        sample = getattr(fn, "sample", None)
        while len(times) < min_repeats or (len(times) < max_repeats and spent < budget_s):
            if sample is not None:
                v = sample(self)
                times.append(v)
                spent += v[0] + v[1]
                continue
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                dt = a.elapsed_time(b) / 1e3
            else:
                t0 = self.clock()
                fn()
                dt = self.clock() - t0
            times.append(dt)
            spent += dt
        return times

    def measure_points(self, points: list[tuple[tuple, Callable[[], Callable]]], g: Grid,
                       log: Callable[[str], None]) -> dict[tuple, np.ndarray]:
        """Samples per point key, taken in `g.passes` passes over all the points: a burst of
        load from elsewhere on the machine then spoils a fraction of each point's samples (which
        the median ignores) rather than all the samples of a few points."""
        out: dict[tuple, list] = {k: [] for k, _ in points}
        per = lambda n: max(1, math.ceil(n / g.passes))
        for i in range(g.passes):
            t0 = time.perf_counter()
            for key, build in points:
                out[key] += self.measure(build(), g.warmup, per(g.min_repeats), per(g.max_repeats),
                                         g.budget_s / g.passes)
            log(f"  pass {i + 1}/{g.passes}: {len(points)} points in {time.perf_counter() - t0:.1f}s")
        return {k: np.asarray(v) for k, v in out.items()}


def _row(op: str, b: int, q: int, ctx: int, tokens: int, t: np.ndarray) -> ProfileRow:
    if t.ndim == 2:  # (layer, non_attention, attention op in the layer) samples
        return _in_context_row(op, b, q, ctx, tokens, t)
    p10, med, p90 = np.percentile(t, [10, 50, 90])
    return ProfileRow(op, b, q, ctx, tokens, float(med), float(p10), float(p90), int(t.size))


def _in_context_row(op: str, b: int, q: int, ctx: int, tokens: int, t: np.ndarray) -> ProfileRow:
    """The row of an in-context attention point from its samples t[:, (layer, non_attention,
    attention op inside the layer)]: median of layer - non_attention (what attention adds to a
    layer), floored at the median of the attention op's own time inside the layer; p10/p90 of
    the per-sample differences, floored the same way and kept around the median."""
    d = t[:, 0] - t[:, 1]
    floor = float(np.median(t[:, 2]))
    med = max(float(np.median(d)), floor)
    p10, p90 = np.percentile(np.maximum(d, t[:, 2]), [10, 90])
    return ProfileRow(op, b, q, ctx, tokens, med, float(min(p10, med)), float(max(p90, med)), int(len(t)))


class _InContextAttention:
    """One attention point (b sequences, q new tokens over ctx cached) timed inside a layer.

    `sample(timer)` times, back to back and in alternating order, (a) a whole layer as
    Transformer.forward runs it (pre_attention, Block.attend with the forward's precomputed mask,
    post_attention; a stamp on each side of the attention op) and (b) the same layer's
    non-attention work on the same tokens, each on the next of the rotating layer copies and KV
    caches. Returns (layer s, non_attention s, attention op inside the layer s)."""

    def __init__(self, tm, blocks: list, cache, x, positions, slots, kv_lens, n: int):
        self.cache, self.x, self.pos, self.slots, self.kv_lens, self.n = \
            cache, x, positions, slots, kv_lens, n
        self.blocks = itertools.cycle(blocks)
        self.layers = itertools.cycle(range(cache.n_layers))
        self.mask = tm.causal_mask(x.shape[1], kv_lens, n)  # once per forward, as Transformer.forward
        self._flip = False

    def _layer(self, stamp):
        blk, li = next(self.blocks), next(self.layers)
        t0 = stamp()
        q, k, v = blk.pre_attention(self.x, self.pos)
        t1 = stamp()
        o = blk.attend(q, k, v, self.pos, self.cache, li, self.slots, self.kv_lens, self.n, self.mask)
        t2 = stamp()
        blk.post_attention(self.x, o)
        return [t0, t1, t2, stamp()]

    def _non_attention(self, stamp):
        blk = next(self.blocks)
        t0 = stamp()
        blk.non_attention_parts(self.x, self.pos)
        return [t0, stamp()]

    def __call__(self):  # warm-up: both halves, untimed
        self._layer(lambda: None)
        self._non_attention(lambda: None)

    def sample(self, timer) -> tuple[float, float, float]:
        self._flip = not self._flip
        if self._flip:
            lay, na = self._layer(timer.stamp), self._non_attention(timer.stamp)
        else:
            na, lay = self._non_attention(timer.stamp), self._layer(timer.stamp)
        s_lay, s_na = timer.spans(lay), timer.spans(na)
        return sum(s_lay), s_na[0], s_lay[1]


# ------------------------------------------------------------------------------------- metadata
def _device_info(torch, device) -> dict:
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        driver = None
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
        return {"name": prop.name, "memory_bytes": int(prop.total_memory), "driver": driver,
                "cuda": torch.version.cuda, "torch": torch.__version__}
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"name": f"{name} (CPU, {os.cpu_count()} cores)", "memory_bytes": int(mem), "driver": None,
            "cuda": None, "torch": torch.__version__}


def default_device_name(torch, device) -> str:
    """The specsim device name (profile folder) for this machine: cpu-local, or the GPU's catalogue key."""
    if device.type == "cpu":
        return "cpu-local"
    name = torch.cuda.get_device_name(device).lower()
    for key, words in (("h200-sxm", ("h200",)), ("h100-pcie", ("h100", "pcie")), ("h100-sxm", ("h100",)),
                       ("a100-80gb-sxm", ("a100",)), ("l40s", ("l40s",)), ("l4", ("l4",)),
                       ("b200", ("b200",))):
        if all(w in name for w in words):
            return key
    raise SpecsimError(f"cannot tell the specsim device name of GPU '{name}': pass --device-name "
                       f"(one of {', '.join(sorted(GPUS))}, or a name of your own)")


# ---------------------------------------------------------------------------------------- capture
@dataclass
class CaptureOptions:
    model: str
    tp: int = 1
    device: str = "cpu"
    dtype: str | None = None  # default: bf16 on cuda, fp32 on cpu
    grid: str = "quick"
    device_name: str | None = None
    threads: int | None = None
    seed: int = 0
    max_memory_gb: float | None = None  # cap on one attention point's working set
    command: str | None = None
    with_forward: bool = True
    with_breakdown: bool = True
    log: Callable[[str], None] | None = field(default=None, repr=False)


def _torch():
    try:
        import torch
    except ImportError:
        raise SpecsimError("specsim profile needs torch: pip install 'specsim[torch]'") from None
    return torch


def capture_profile(opts: CaptureOptions) -> Profile:
    """Measure the profile described by `opts` on this machine and return it (not written)."""
    torch = _torch()
    from simulator.measure import torch_models as tm

    if opts.model not in MODELS:
        raise SpecsimError(f"unknown model '{opts.model}'; valid names: {', '.join(sorted(MODELS))}")
    arch: ModelArch = MODELS[opts.model]
    why = arch.check_tp(opts.tp)
    if why:
        raise SpecsimError(f"--tp {opts.tp}: {why}")
    if opts.grid not in GRIDS:
        raise SpecsimError(f"unknown --grid '{opts.grid}'; expected one of {', '.join(GRIDS)}")
    g = GRIDS[opts.grid]
    if opts.device not in ("cpu", "cuda"):
        raise SpecsimError(f"--device '{opts.device}': expected cpu or cuda")
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise SpecsimError("--device cuda: torch sees no CUDA GPU on this machine")
    device = torch.device(opts.device)
    dtype = opts.dtype or ("bf16" if device.type == "cuda" else "fp32")
    torch_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in torch_dtypes:
        raise SpecsimError(f"--dtype '{dtype}': expected one of {', '.join(torch_dtypes)}")
    tdt = torch_dtypes[dtype]
    if opts.threads:
        torch.set_num_threads(opts.threads)
    log = opts.log or (lambda s: None)
    gpu_name = opts.device_name or default_device_name(torch, device)
    allocator = steady_cpu_allocator() if device.type == "cpu" else "torch CUDA caching allocator"
    timer = _Timer(torch, device)
    by = BYTES_PER_DTYPE[dtype]
    gen = torch.Generator(device=device)
    gen.manual_seed(opts.seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=tdt)

    mem_cap = _memory_cap(torch, device, opts.max_memory_gb)
    t_start = time.perf_counter()
    rows: list[ProfileRow] = []
    skipped: list[str] = []
    measured: dict[tuple, float] = {}  # (op, batch, q, ctx, tokens) -> median, for the overhead fit

    # Rotate over copies of the weights / KV so that each timed call finds them in the cache as a
    # real forward does: a single layer re-run back to back would sit in the last-level cache,
    # while in a forward the same layer comes back only after all the others. So: as many distinct
    # layers as the model has (up to what overflows the cache twice), and cold copies of the LM
    # head / embedding / KV unless the whole model fits in the cache.
    flush, n_rot = rotation(arch, opts.tp, dtype, _cache_bytes(torch, device))
    layer_model = tm.build_model(arch, tp=opts.tp, n_layers=n_rot, dtype=tdt, device=device, seed=opts.seed)
    s = layer_model.shape
    blocks = list(layer_model.layers)
    lm_w = layer_model.lm_head.weight[: -(-s.vocab // opts.tp)]  # the vocab/tp shard of the LM head
    lm_ws = _copies(lm_w, flush)
    embeds = [layer_model.embed] + [torch.nn.Embedding.from_pretrained(w) for w in
                                    _copies(layer_model.embed.weight, flush)[1:]]

    def embed(table, ids, pos):  # Transformer.embed_tokens with a rotating copy of the table
        x = table(ids)
        return x if layer_model.pos_embed is None else x + layer_model.pos_embed(pos)

    def per_token_fns(T):
        x = randn(1, T, s.hidden)
        pos = torch.arange(T, device=device)[None, :]
        ids = torch.randint(0, s.vocab, (1, T), generator=gen, device=device)
        blk, lmw, emb = itertools.cycle(blocks), itertools.cycle(lm_ws), itertools.cycle(embeds)
        return {
            "non_attention": lambda: next(blk).non_attention_parts(x, pos),
            "embedding": lambda: embed(next(emb), ids, pos),
            "lm_head": lambda: torch.nn.functional.linear(layer_model.norm(x), next(lmw)),
        }

    def kv_caches(b, n):
        """A KV cache with enough layers that cycling through them overflows the cache (`flush`)."""
        n_caches = n_copies(2 * b * n * s.n_kv_heads * s.head_dim * by, flush, 32)
        return tm.KVCache(n_caches, b, n, s.n_kv_heads, s.head_dim, tdt, device)

    def attention_point(b, q, ctx):
        """The attention point as timed for the profile: in context (_InContextAttention)."""
        n = ctx + q
        pos = (ctx + torch.arange(q, device=device))[None, :].expand(b, q)
        kv_lens = torch.full((b,), n, dtype=torch.long, device=device)
        return _InContextAttention(tm, blocks, kv_caches(b, n), randn(b, q, s.hidden), pos,
                                   torch.arange(b, device=device), kv_lens, n)

    def attention_fn(b, q, ctx):
        """The attention op alone (for the per-operator breakdown), with the forward's mask."""
        n = ctx + q
        cache = kv_caches(b, n)
        layers = itertools.cycle(range(cache.n_layers))
        slots = torch.arange(b, device=device)
        pos = (ctx + torch.arange(q, device=device))[None, :].expand(b, q)
        qt, k, v = randn(b, s.n_heads, q, s.head_dim), randn(b, q, s.n_kv_heads, s.head_dim), \
            randn(b, q, s.n_kv_heads, s.head_dim)
        kv_lens = torch.full((b,), n, dtype=torch.long, device=device)
        mask = tm.causal_mask(q, kv_lens, n)
        blk = blocks[0]
        return lambda: blk.attend(qt, k, v, pos, cache, next(layers), slots, kv_lens, n, mask)

    def attention_bytes(b, q, ctx):
        n = ctx + q
        kv = 2 * b * n * s.n_kv_heads * s.head_dim * by
        # cache + gathered copy + GQA-expanded copy + scores/mask (fp32 on the math path) + the
        # layer's activations (attention is timed inside a layer)
        return (2 * kv + kv * s.n_heads / s.n_kv_heads + 3 * b * s.n_heads * q * n * 4
                + 4 * b * q * (s.hidden + 2 * s.ffn) * by)

    points: list[tuple[tuple, Callable[[], Callable]]] = []
    for T in g.tokens:
        for op in ("non_attention", "embedding", "lm_head"):
            points.append(((op, 0, 0, 0, T), lambda T=T, op=op: per_token_fns(T)[op]))
    for (b, q, ctx) in g.attention_points():
        if ctx + q > arch.max_position:
            skipped.append(f"attention b={b} q={q} ctx={ctx}: beyond max_position {arch.max_position}")
            continue
        need = attention_bytes(b, q, ctx)
        if need > mem_cap:
            skipped.append(f"attention b={b} q={q} ctx={ctx}: needs ~{need / 2**30:.1f} GiB > "
                           f"cap {mem_cap / 2**30:.1f} GiB")
            continue
        points.append((("attention", b, q, ctx, b * q), lambda b=b, q=q, ctx=ctx: attention_point(b, q, ctx)))
    full = None
    if opts.with_forward:
        full = tm.build_model(arch, tp=opts.tp, dtype=tdt, device=device, seed=opts.seed)
        points += _forward_points(torch, full, g, by, device, mem_cap, skipped)
    log(f"{len(points)} points, {len(skipped)} skipped")

    with torch.inference_mode():
        samples = timer.measure_points(points, g, log)
        for key, t in samples.items():
            r = _row(*key, t)
            rows.append(r)
            measured[r.key] = r.median_s
        forward_overhead, fwd_notes = None, {}
        if full is not None:
            forward_overhead, fwd_notes = _fit_forward_overhead(len(full.layers), measured)
            del full

        if opts.with_breakdown:
            log("per-operator breakdown (torch.profiler)")
            pts = [("non_attention", 0, 0, 0, T, per_token_fns(T)["non_attention"])
                   for T in g.breakdown_tokens if ("non_attention", 0, 0, 0, T) in measured]
            pts += [("attention", b, q, c, b * q, attention_fn(b, q, c))
                    for (b, q, c) in g.breakdown_attention if ("attention", b, q, c, b * q) in measured]
            for parent, b, q, c, T, fn in pts:
                rows += _breakdown(torch, device, parent, b, q, c, T, fn, g.profiler_iters)

    allreduce_rows, ar_note = _allreduce_rows(arch, opts.tp, gpu_name, dtype, g)
    rows += allreduce_rows
    wall = time.perf_counter() - t_start
    log(f"captured {len(rows)} rows in {wall:.1f}s")

    meta = ProfileMeta(
        model=arch.name, tp=opts.tp, dtype=dtype, device=_device_info(torch, device), gpu=gpu_name,
        attention_backend=ATTENTION_BACKEND, mode="eager",
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        grid=g.describe(), command=opts.command or _default_command(opts),
        specsim_version=simulator.__version__, step_overhead_s=None,
        forward_overhead_s=forward_overhead, source="specsim-profiler",
        notes={
            "timing": timer.description,
            "torch_threads": torch.get_num_threads(),
            "allocator": allocator,
            "layers_timed": "one layer at the tp shard shape; per-layer ops are for ONE layer",
            "attention": "KV write + gather of ctx+q positions + SDPA with lower-right causal mask; "
                         "a batch is padded to its longest context; in context: median of (whole layer "
                         "- its non-attention work) timed back to back, floored at the attention op's "
                         "own time inside the layer (the mask built once per forward, not per layer)",
            "lm_head": f"final norm + GEMM over the vocab/tp shard ({lm_w.shape[0]} rows)",
            "step_overhead_s": "not measured (engine-specific): the fallback's value is used",
            "forward_overhead": fwd_notes,
            "allreduce": ar_note,
            "skipped": skipped,
            "capture_wall_s": round(wall, 2),
        },
    )
    return Profile(meta=meta, rows=rows)


def _cache_bytes(torch, device) -> int:
    """Last-level cache size (GPU L2, CPU L3), to size the copies that keep timed reads cold."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20))
    for idx in (3, 2):
        try:
            txt = open(f"/sys/devices/system/cpu/cpu0/cache/index{idx}/size").read().strip()
            return int(txt[:-1]) * {"K": 2**10, "M": 2**20}[txt[-1]]
        except (OSError, ValueError, KeyError):
            continue
    return 32 * 2**20


def rotation(arch, tp: int, dtype: str, llc: int) -> tuple[int, int]:
    """(flush, layers): the bytes that cycling copies must exceed to keep timed reads cold (twice
    the last-level cache, or 0 when the whole model fits in it), and how many distinct layers to
    rotate over (as many as the model has, up to what overflows the cache twice)."""
    flush = 2 * llc if arch.weight_bytes(dtype) / tp > llc else 0
    layer_bytes = (arch.attn_params_per_layer + arch.mlp_params_per_layer) / tp * BYTES_PER_DTYPE[dtype]
    return flush, int(min(16, arch.n_layers, max(1, math.ceil(2 * llc / layer_bytes))))


def n_copies(nbytes: float, flush: int, cap: int) -> int:
    """How many copies of `nbytes` to cycle through to overflow `flush` bytes (at most cap)."""
    return int(min(cap, max(1, math.ceil(flush / nbytes)))) if flush else 1


def _copies(w, flush: int) -> list:
    """`w` plus enough clones of it that cycling through them overflows a cache of `flush` bytes."""
    return [w] + [w.clone() for _ in range(n_copies(w.numel() * w.element_size(), flush, 16) - 1)]


def _memory_cap(torch, device, max_gb: float | None) -> float:
    if max_gb is not None:
        return max_gb * 2**30
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.7 * free
    try:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        avail = 8 * 2**30
    return min(0.25 * avail, 4 * 2**30)  # a CPU capture should not push the machine into swap


def _forward_points(torch, model, g: Grid, by: int, device, mem_cap: float, skipped: list[str]):
    """Whole-model forward points (logits for every position), each as (key, builder)."""
    sh = model.shape
    pts = []
    for (b, q, ctx) in dict.fromkeys(g.forward_points + g.validation_points):
        kv = len(model.layers) * 2 * b * (ctx + q) * sh.n_kv_heads * sh.head_dim * by
        if kv > mem_cap:
            skipped.append(f"forward b={b} q={q} ctx={ctx}: KV cache ~{kv / 2**30:.1f} GiB > cap")
            continue

        def build(b=b, q=q, ctx=ctx):
            cache = model.new_cache(b, ctx + q)
            slots = torch.arange(b)
            ids = torch.randint(0, sh.vocab, (b, q), device=device)

            def fn():
                cache.lens[:] = ctx
                return model(ids, cache, slots)
            return fn
        pts.append((("forward", b, q, ctx, b * q), build))
    return pts


OVERHEAD_MAX_TOKENS = 4


def _fit_forward_overhead(n_layers: int, measured: dict[tuple, float]):
    """The fixed cost of a forward beyond its parts: median residual over the small points."""
    residuals = {}
    for (op, b, q, ctx, T), t in measured.items():
        if op != "forward":
            continue
        parts = [("non_attention", 0, 0, 0, T), ("attention", b, q, ctx, T), ("embedding", 0, 0, 0, T),
                 ("lm_head", 0, 0, 0, T)]
        if any(p not in measured for p in parts):
            continue  # not on the grid: validation only
        composed = n_layers * (measured[parts[0]] + measured[parts[1]]) + measured[parts[2]] + measured[parts[3]]
        residuals[(b, q, ctx)] = t - composed
    if not residuals:
        return None, {"method": "no forward point on the measured grid"}
    # The smallest passes: there the parts are small, so the residual is mostly the fixed cost
    # and not the parts' own timing error (which grows with the work).
    small = sorted(residuals, key=lambda p: p[0] * p[1])
    small = [p for p in small if p[0] * p[1] <= OVERHEAD_MAX_TOKENS] or small[:1]
    overhead = max(0.0, float(np.median([residuals[p] for p in small])))
    notes = {"method": f"median over forward points with T <= {OVERHEAD_MAX_TOKENS} of (direct forward "
                       f"- composed parts), clipped at 0",
             "residual_s": {f"b{p[0]}_q{p[1]}_ctx{p[2]}": round(v, 9) for p, v in residuals.items()}}
    return overhead, notes


def _breakdown(torch, device, parent, b, q, ctx, T, fn, iters) -> list[ProfileRow]:
    """Per-operator self time of fn() from torch.profiler, averaged over `iters` calls."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    fn()
    with profile(activities=acts) as prof:
        for _ in range(iters):
            fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(float(getattr(e, attr)) for e in events)
    if cuda and total <= 0:
        raise SpecsimError(f"torch.profiler returned zero CUDA device time for {parent} b={b} q={q} "
                           f"ctx={ctx}: the CUDA activity was not recorded (check CUPTI / the torch build)")
    rows = []
    for e in events:
        us = float(getattr(e, attr))
        if us <= 0:
            continue
        t = us / 1e6 / iters
        rows.append(ProfileRow(f"op:{parent}/{e.key}", b, q, ctx, T, t, t, t, iters))
    return rows


def _allreduce_rows(arch, tp, gpu_name, dtype, g) -> tuple[list[ProfileRow], str]:
    if tp == 1:
        return [], "tp = 1: no all-reduce"
    gpu = GPUS.get(gpu_name)
    if gpu is None:
        return [], (f"tp = {tp} but '{gpu_name}' has no catalogue interconnect: no all-reduce rows "
                    f"(the backend uses its fallback for communication)")
    roofline = RooflineLatency(arch, gpu, tp, dtype)
    p = roofline.params
    rows = []
    for T in g.tokens:
        t = roofline.allreduce_s(T)
        rows.append(ProfileRow("allreduce", 0, 0, 0, T, t, t, t, 1))
    return rows, (f"DERIVED, not measured (one device here): ring all-reduce over {gpu.interconnect} "
                  f"{gpu.interconnect_gbps} GB/s bidirectional x efficiency {p.interconnect_efficiency} "
                  f"+ {p.allreduce_latency_s} s latency")


def _default_command(opts: CaptureOptions) -> str:
    """The command line that reproduces this capture (when the real one is not at hand)."""
    parts = ["specsim", "profile", "--model", opts.model, "--tp", str(opts.tp), "--device", opts.device,
             "--grid", opts.grid]
    for flag, v in (("--dtype", opts.dtype), ("--device-name", opts.device_name),
                    ("--threads", opts.threads), ("--max-memory-gb", opts.max_memory_gb)):
        if v is not None:
            parts += [flag, str(v)]
    if opts.seed:
        parts += ["--seed", str(opts.seed)]
    parts += [] if opts.with_forward else ["--no-forward"]
    parts += [] if opts.with_breakdown else ["--no-breakdown"]
    return shlex.join(parts)
