"""`specsim profile`: measure a model's per-layer operator times on this machine into a profile.
(grid.py: what is measured; timing.py: how; bench.py: the timed callables; this module: the capture.)

The model is built in plain torch (simulator/measure/torch_models.py) at the shapes ONE GPU holds under
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
import shlex
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import simulator
from simulator.errors import SpecsimError
from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS, ModelArch
from simulator.latency.profiles import Profile, ProfileMeta, ProfileRow
from simulator.latency.roofline import RooflineLatency
from simulator.measure.profiler.bench import Bench
from simulator.measure.profiler.grid import GRIDS, Grid
from simulator.measure.profiler.machine import _device_info, _memory_cap, default_device_name
from simulator.measure.profiler.timing import _breakdown, _row, _Timer, steady_cpu_allocator

ATTENTION_BACKEND = "torch-sdpa-padded"  # gather to the batch's max context, masked (torch_models)
TORCH_DTYPES = ("fp32", "bf16", "fp16")


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


def _checked(opts: CaptureOptions, torch) -> tuple[ModelArch, Grid, str]:
    """The model, grid and dtype the options name, or a SpecsimError naming the bad option."""
    if opts.model not in MODELS:
        raise SpecsimError(f"unknown model '{opts.model}'; valid names: {', '.join(sorted(MODELS))}")
    arch: ModelArch = MODELS[opts.model]
    why = arch.check_tp(opts.tp)
    if why:
        raise SpecsimError(f"--tp {opts.tp}: {why}")
    if opts.grid not in GRIDS:
        raise SpecsimError(f"unknown --grid '{opts.grid}'; expected one of {', '.join(GRIDS)}")
    if opts.device not in ("cpu", "cuda"):
        raise SpecsimError(f"--device '{opts.device}': expected cpu or cuda")
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise SpecsimError("--device cuda: torch sees no CUDA GPU on this machine")
    dtype = opts.dtype or ("bf16" if opts.device == "cuda" else "fp32")
    if dtype not in TORCH_DTYPES:
        raise SpecsimError(f"--dtype '{dtype}': expected one of {', '.join(TORCH_DTYPES)}")
    return arch, GRIDS[opts.grid], dtype


def _grid_points(bench: Bench, g: Grid, arch: ModelArch, mem_cap: float,
                 skipped: list[str]) -> list[tuple[tuple, Callable[[], Callable]]]:
    """(row key, builder of the timed callable) for the per-token ops and the attention points
    that fit the model's context and the memory cap (the others go to `skipped`)."""
    points: list[tuple[tuple, Callable[[], Callable]]] = []
    for T in g.tokens:
        for op in ("non_attention", "embedding", "lm_head"):
            points.append(((op, 0, 0, 0, T), lambda T=T, op=op: bench.per_token_fns(T)[op]))
    for (b, q, ctx) in g.attention_points():
        if ctx + q > arch.max_position:
            skipped.append(f"attention b={b} q={q} ctx={ctx}: beyond max_position {arch.max_position}")
            continue
        need = bench.attention_bytes(b, q, ctx)
        if need > mem_cap:
            skipped.append(f"attention b={b} q={q} ctx={ctx}: needs ~{need / 2**30:.1f} GiB > "
                           f"cap {mem_cap / 2**30:.1f} GiB")
            continue
        points.append((("attention", b, q, ctx, b * q),
                       lambda b=b, q=q, ctx=ctx: bench.attention_point(b, q, ctx)))
    return points


def _breakdown_rows(torch, device, bench: Bench, g: Grid, measured: dict) -> list[ProfileRow]:
    """torch.profiler's per-operator rows for the grid's breakdown points that were measured."""
    pts = [("non_attention", 0, 0, 0, T, bench.per_token_fns(T)["non_attention"])
           for T in g.breakdown_tokens if ("non_attention", 0, 0, 0, T) in measured]
    pts += [("attention", b, q, c, b * q, bench.attention_fn(b, q, c))
            for (b, q, c) in g.breakdown_attention if ("attention", b, q, c, b * q) in measured]
    rows = []
    for parent, b, q, c, T, fn in pts:
        rows += _breakdown(torch, device, parent, b, q, c, T, fn, g.profiler_iters)
    return rows


def _notes(timer: _Timer, torch, allocator: str, bench: Bench, fwd_notes: dict, ar_note: str,
           skipped: list[str], wall: float) -> dict:
    return {
        "timing": timer.description,
        "torch_threads": torch.get_num_threads(),
        "allocator": allocator,
        "layers_timed": "one layer at the tp shard shape; per-layer ops are for ONE layer",
        "attention": "KV write + gather of ctx+q positions + SDPA with lower-right causal mask; "
                     "a batch is padded to its longest context; in context: median of (whole layer "
                     "- its non-attention work) timed back to back, floored at the attention op's "
                     "own time inside the layer (the mask built once per forward, not per layer)",
        "lm_head": f"final norm + GEMM over the vocab/tp shard ({bench.lm_w.shape[0]} rows)",
        "step_overhead_s": "not measured (engine-specific): the fallback's value is used",
        "forward_overhead": fwd_notes,
        "allreduce": ar_note,
        "skipped": skipped,
        "capture_wall_s": round(wall, 2),
    }


def check_options(opts: CaptureOptions) -> None:
    """SpecsimError naming the first bad option, before any timing starts."""
    _checked(opts, _torch())


def capture_profile(opts: CaptureOptions) -> Profile:
    """Measure the profile described by `opts` on this machine and return it (not written)."""
    torch = _torch()
    from simulator.measure import torch_models as tm

    arch, g, dtype = _checked(opts, torch)
    device = torch.device(opts.device)
    tdt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if opts.threads:
        torch.set_num_threads(opts.threads)
    log = opts.log or (lambda s: None)
    gpu_name = opts.device_name or default_device_name(torch, device)
    allocator = steady_cpu_allocator() if device.type == "cpu" else "torch CUDA caching allocator"
    timer = _Timer(torch, device)
    mem_cap = _memory_cap(torch, device, opts.max_memory_gb)
    t_start = time.perf_counter()
    skipped: list[str] = []
    bench = Bench(torch, tm, arch, opts.tp, dtype, tdt, device, opts.seed)
    points = _grid_points(bench, g, arch, mem_cap, skipped)
    full = None
    if opts.with_forward:
        full = tm.build_model(arch, tp=opts.tp, dtype=tdt, device=device, seed=opts.seed)
        points += _forward_points(torch, full, g, bench.by, device, mem_cap, skipped)
    log(f"{len(points)} points, {len(skipped)} skipped")

    rows: list[ProfileRow] = []
    measured: dict[tuple, float] = {}  # (op, batch, q, ctx, tokens) -> median, for the overhead fit
    with torch.inference_mode():
        for key, t in timer.measure_points(points, g, log).items():
            r = _row(*key, t)
            rows.append(r)
            measured[r.key] = r.median_s
        forward_overhead, fwd_notes = None, {}
        if full is not None:
            forward_overhead, fwd_notes = _fit_forward_overhead(len(full.layers), measured)
            del full
        if opts.with_breakdown:
            log("per-operator breakdown (torch.profiler)")
            rows += _breakdown_rows(torch, device, bench, g, measured)

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
        notes=_notes(timer, torch, allocator, bench, fwd_notes, ar_note, skipped, wall))
    return Profile(meta=meta, rows=rows)


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
