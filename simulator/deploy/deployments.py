"""Scenario deployments -> resolved deployments: catalogue lookups, memory plan, latency backends.

Everything that needs the catalogues is checked here, with errors that name the field path
(`deployments[1].tp`) and what was expected.

`acceptance: {sdsl: ...}` is turned into a concrete alpha here (simulator/physics/sdsl.py). With
`band: true` the runner resolves the deployment three times, as variants "alpha-", "alpha" and
"alpha+" (named `name[alpha-]`, `name`, `name[alpha+]`), at alpha -/+ the law's RMSE: sqrt of the
pooled fit's published MSE 0.00128, i.e. 0.0358 (SDSL, arXiv 2603.11053; MODEL.md section 3).
`gamma: auto` resolves with lookahead.GAMMA_MAX as a provisional lookahead (an upper bound for
the memory plan, enough for `specsim check`); the runner then picks the lookahead at the
workload's operating point (simulator/deploy/gamma.py) and resolves again with it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from simulator.physics import sdsl
from simulator.hardware.gpus import GPU, GPUS
from simulator.hardware.models import MODELS, ModelArch
from simulator.errors import SpecsimError, did_you_mean
from simulator.user_files import load_user_json
from simulator.physics.lookahead import GAMMA_MAX
from simulator.latency.base import LatencyModel
from simulator.latency.ideal import IdealLatency
from simulator.latency.roofline import RooflineLatency, RooflineParams
from simulator.deploy.memory import (MemoryPlan, activation_reserve_bytes, engine_overhead_bytes,
                                     plan_memory)
from simulator.latency import engine_presets, serving
from simulator.latency.engine_costs import EngineLatency
from simulator.config.schema import (Acceptance, Deployment, InlineGPU, InlineModel, Latency, Scheduler,
                                SSDConfig)
from simulator.physics.handshake import Handshake
from simulator.hardware.quant import NONE, WeightFormat
from simulator.deploy.weights import Weights, resolve_weights


@dataclass(frozen=True)
class ResolvedDeployment:
    name: str
    strategy: str
    target: ModelArch
    draft: ModelArch | None
    gpu: GPU
    tp: int
    draft_tp: int
    replicas: int
    router: str
    gamma: int
    acceptance: Acceptance | None
    scheduler: Scheduler
    dtype: str
    memory: MemoryPlan
    target_latency: LatencyModel
    draft_latency: LatencyModel | None
    price_per_gpu_hour: float  # a blend over target and draft GPUs when their prices differ
    draft_placement: str | None = None  # "colocated" / "dedicated"; None without a draft
    draft_gpus: int = 0  # dedicated draft GPUs per replica (the draft's tp)
    draft_gpu: GPU | None = None  # dedicated draft's device
    draft_memory: MemoryPlan | None = None  # per dedicated draft GPU
    handshake: Handshake | None = None  # per round, for a dedicated draft
    ssd: SSDConfig | None = None  # strategy ssd: its settings, defaults filled in
    acceptance_sdsl: dict | None = None  # how alpha was derived from the SDSL laws (see sdsl_alpha)
    gamma_choice: dict | None = None  # gamma: auto: lookahead.GammaChoice.as_dict(); set by the runner
    variant_of: str | None = None  # band variants: the scenario's deployment name
    # Query tokens per sequence in a colocated draft's first step of a round: 1 when its KV holds
    # every token but the pending one; 2 when it lags by two (simulator/measure/real_engine.py).
    draft_first_q: int = 1
    engine: serving.EngineCosts = engine_presets.PRESETS["ideal"]  # the serving engine's implementation
    weights: Weights | None = None  # each model's dtype and weight format (simulator/deploy/weights.py)
    warnings: tuple[str, ...] = ()  # accepted but doubtful settings, for the console and report

    @property
    def gpus(self) -> int:
        return (self.tp + self.draft_gpus) * self.replicas

    @property
    def latency_source(self) -> str:
        sources = {self.target_latency.source}
        if self.draft_latency is not None:
            sources.add(self.draft_latency.source)
        return "+".join(sorted(sources))

    @property
    def latency_notes(self) -> dict:
        """Per model, where its latency backend's numbers come from, in words."""
        notes = {"target": getattr(self.target_latency, "source_note", None)}
        if self.draft_latency is not None:
            notes["draft"] = getattr(self.draft_latency, "source_note", None)
        return notes


def resolve_model(spec: str | InlineModel, field: str) -> ModelArch:
    if isinstance(spec, InlineModel):
        m = ModelArch(spec.name, spec.family, spec.n_layers, spec.hidden, spec.n_heads,
                      spec.n_kv_heads, spec.head_dim, spec.ffn, spec.vocab, spec.params or 0.0,
                      spec.tied_embeddings, spec.qkv_bias, spec.gated_mlp, spec.max_position)
        return m if spec.params else replace(m, params=float(m.computed_params))
    if spec not in MODELS:
        raise SpecsimError(f"{field}: unknown model '{spec}'{did_you_mean(spec, MODELS)}; known "
                           f"models: {', '.join(MODELS)} (or give an inline architecture)")
    return MODELS[spec]


def resolve_gpu(spec: str | InlineGPU, field: str) -> GPU:
    if isinstance(spec, InlineGPU):
        return GPU(spec.name, spec.label or spec.name, spec.hbm_gb, spec.bandwidth_tbps,
                   spec.bf16_tflops, spec.fp8_tflops, spec.interconnect, spec.interconnect_gbps,
                   spec.price_per_gpu_hour, notes="inline")
    if spec not in GPUS:
        raise SpecsimError(f"{field}: unknown gpu '{spec}'{did_you_mean(spec, GPUS)}; known GPUs: "
                           f"{', '.join(GPUS)} (or give an inline device)")
    return GPUS[spec]


def _check_block_fits(mem, block_size: int, f: str) -> None:
    """Memory is left for KV, but not one block of block_size tokens: name block_size."""
    if mem.kv_budget_gb > 0 and mem.kv_capacity_tokens < block_size:
        raise SpecsimError(f"{f}.scheduler.block_size: {block_size} tokens per block, but the KV "
                           f"cache left in memory holds {mem.kv_capacity_tokens} tokens, not one "
                           "block; use a smaller block_size (vLLM uses 16)")


def roofline_params(cfg: Latency, field: str) -> RooflineParams:
    return RooflineParams.checked(dict(cfg.params), f"{field}.params")


PROJECT_PROFILES = Path(__file__).resolve().parents[2] / "profiles"  # the bundled profiles


def profiles_root(profiles_dir: str, base: Path) -> Path:
    """Where a relative `profiles_dir` is: beside the scenario (base), else in the working
    directory, else the project's bundled profiles/ (a scenario run from anywhere finds them)."""
    root = Path(profiles_dir)
    if root.is_absolute():
        return root
    for cand in (base / root, root):
        if cand.is_dir():
            return cand
    return PROJECT_PROFILES if profiles_dir == "profiles" and PROJECT_PROFILES.is_dir() else root


def make_latency(cfg: Latency, model: ModelArch, gpu: GPU, tp: int, dtype: str, base: Path,
                 field: str, quant: WeightFormat = NONE) -> LatencyModel:
    """The latency backend a deployment asked for, bound to (model, gpu, tp, dtype, weight
    format). The ideal backend prices FLOPs only, which weight-only quantization leaves alone."""
    if cfg.backend == "ideal":
        return IdealLatency(model, gpu, tp, dtype)
    if cfg.backend == "profile" and quant.quantized:
        raise SpecsimError(f"{field}.backend: a measured profile is of unquantized weights; "
                           f"{model.name} is {quant.name}-quantized: use backend roofline or calibrated")
    params = roofline_params(cfg, field)
    if cfg.backend == "roofline":
        m = RooflineLatency(model, gpu, tp, dtype, params, quant)
        if cfg.params:
            m.source_note = f"datasheet peak FLOP/s and bandwidth x efficiencies, scenario params {cfg.params}"
        return m
    root = profiles_root(cfg.profiles_dir, base)
    if cfg.backend == "calibrated":
        from simulator.latency.calibration import derived_params
        got = derived_params(gpu, root)
        if got is None and "backend" not in cfg.model_fields_set:  # the default, not asked for
            m = RooflineLatency(model, gpu, tp, dtype, params, quant)
            m.source_note = (f"datasheet peak FLOP/s and bandwidth x default efficiencies: no "
                             f"calibration under {root} for the default `calibrated` backend")
            return m
        if got is None:
            raise SpecsimError(f"{field}.backend: 'calibrated' needs a saved calibration under "
                               f"{root} (run `specsim calibrate`); none found")
        fitted, how = got
        m = RooflineLatency(model, gpu, tp, dtype, replace(fitted, **cfg.params), quant)
        m.source, m.source_note = "derived", how
        return m
    from simulator.latency.profile import make_profile_latency  # torch-free, loaded on demand
    return make_profile_latency(model, gpu, tp, dtype, root=root, overrides=cfg.params,
                                field=field)


BAND_VARIANTS = ("alpha-", "alpha", "alpha+")


def band_variants(d: Deployment) -> tuple[str, ...]:
    """The variants a scenario deployment runs as: three with `band: true`, else one."""
    return BAND_VARIANTS if d.acceptance is not None and d.acceptance.band else ("alpha",)


def sdsl_alpha(acc: Acceptance, draft: ModelArch, target: ModelArch, variant: str,
               field: str) -> tuple[Acceptance, dict]:
    """The concrete Acceptance for `acceptance.sdsl` (alpha from the laws, shifted by -/+ RMSE for
    the band's outer variants), and a record of the derivation for the report."""
    s = acc.sdsl
    law = sdsl.ALPHA_LAW
    info = {"form": "perplexity" if s.draft_ppl is not None else "sizes",
            "alpha_law": {"A": law.A, "B": law.B, "C": law.C, "rmse": law.rmse}}
    try:
        if s.draft_ppl is not None:
            dppl, tppl = s.draft_ppl, s.target_ppl
        else:
            ppl_law = sdsl.PPL_LAWS[s.ppl_law]
            d_target = s.target_training_tokens or s.training_tokens
            dppl = sdsl.perplexity(draft.params, s.training_tokens, ppl_law)
            tppl = sdsl.perplexity(target.params, d_target, ppl_law)
            info.update(ppl_law=ppl_law.name, draft_params=draft.params, target_params=target.params,
                        training_tokens=s.training_tokens, target_training_tokens=d_target)
        band = sdsl.alpha_band(dppl, tppl) if acc.band else None
        mid = sdsl.alpha_from_ppl(dppl, tppl)
    except sdsl.SDSLError as e:
        raise SpecsimError(f"{field}.sdsl: {e}") from None
    alpha = band[BAND_VARIANTS.index(variant)] if band else mid
    info.update(draft_ppl=dppl, target_ppl=tppl, alpha_law_mean=mid,
                band=list(band) if band else None, variant=variant, alpha=alpha)
    return Acceptance(alpha=alpha, heterogeneity=acc.heterogeneity), info


def _models(d: Deployment, f: str) -> tuple:
    """(target, gpu, draft or None, draft_tp, draft_gpu, dedicated), each checked against the
    catalogues, tp and dtype, with errors naming the field."""
    target = resolve_model(d.target, f"{f}.target")
    gpu = resolve_gpu(d.gpu, f"{f}.gpu")
    why = target.check_tp(d.tp)
    if why:
        raise SpecsimError(f"{f}.tp: {why} of {target.name}")
    dedicated = d.placement == "dedicated"
    draft, draft_tp = None, (d.draft_gpus or 1) if dedicated else (d.draft_tp or d.tp)
    draft_gpu = resolve_gpu(d.draft_gpu, f"{f}.draft_gpu") if d.draft_gpu is not None else gpu
    if d.draft is not None:
        draft = resolve_model(d.draft, f"{f}.draft")
        why = draft.check_tp(draft_tp)
        if why and dedicated:
            raise SpecsimError(f"{f}.draft_gpus: a dedicated draft runs tensor-parallel over its "
                               f"GPUs: {why} of draft {draft.name}")
        if why:
            raise SpecsimError(f"{f}.draft_tp: {why} of draft {draft.name} (set draft_tp, e.g. 1)")
        if draft_tp > d.tp and not dedicated:
            raise SpecsimError(f"{f}.draft_tp: a colocated draft runs on the target's GPUs: "
                               f"draft_tp ({draft_tp}) must be <= tp ({d.tp})")
    return target, gpu, draft, draft_tp, draft_gpu, dedicated


def _target_memory(d: Deployment, f: str, target: ModelArch, gpu: GPU, draft: ModelArch | None,
                   draft_tp: int, gamma: int, dedicated: bool,
                   engine: serving.EngineCosts, w: Weights) -> MemoryPlan:
    """The target GPUs' memory plan (with a colocated draft's weights and KV), or an error
    saying the models do not fit."""
    sch = d.scheduler
    spec = d.strategy != "ar"
    if d.activation_reserve_gb is not None:
        reserve = d.activation_reserve_gb * 1e9
    else:
        reserve = activation_reserve_bytes(target, d.tp, sch.max_num_batched_tokens,
                                           sch.max_num_seqs, gamma + 1, d.dtype, engine)
    graphs, non_torch = engine_overhead_bytes(engine, d.tp, gamma + 1, spec)
    mem = plan_memory(target, gpu, d.tp, d.dtype, d.gpu_memory_utilization, reserve,
                      None if dedicated else draft, draft_tp, block_size=sch.block_size,
                      graph_bytes=graphs, non_torch_bytes=non_torch, quant=w.target_format,
                      draft_dtype=w.draft_dtype, draft_quant=w.draft_format)
    _check_block_fits(mem, sch.block_size, f)
    if mem.kv_budget_gb <= 0:
        raise SpecsimError(
            f"{f}: {target.name}{' + ' + draft.name if draft else ''} does not fit on {gpu.label} at "
            f"tp={d.tp}: per GPU, weights {mem.target_weights_gb + mem.draft_weights_gb:.1f} GB + "
            f"activations, CUDA graphs and non-torch memory {mem.overhead_gb:.1f} GB exceed usable "
            f"{mem.usable_gb:.1f} GB ({mem.device_gb:.1f} GB x gpu_memory_utilization "
            f"{d.gpu_memory_utilization}); raise tp or pick a larger GPU")
    return mem


def _price(d: Deployment, gpu: GPU, draft_gpu: GPU, n_draft: int) -> float:
    """Per GPU-hour: the override, or the catalogue prices averaged over target and draft GPUs."""
    if d.price_per_gpu_hour is not None:
        return d.price_per_gpu_hour
    return ((d.tp * gpu.price_per_gpu_hour + n_draft * draft_gpu.price_per_gpu_hour)
            / (d.tp + n_draft))


def resolve(d: Deployment, index: int, base: Path, *, variant: str = "alpha",
            gamma: int | None = None) -> ResolvedDeployment:
    """`variant`: which end of an SDSL band to run ("alpha-", "alpha", "alpha+"); `gamma`: the
    lookahead chosen for `gamma: auto` (without it, GAMMA_MAX stands in: see the docstring)."""
    f = f"deployments[{index}]"
    target, gpu, draft, draft_tp, draft_gpu, dedicated = _models(d, f)
    w = resolve_weights(d, f, target, draft, gpu, draft_gpu if dedicated else gpu)
    if d.gamma == "auto":
        gamma = gamma if gamma is not None else GAMMA_MAX
    else:
        gamma = d.gamma or 0
    acceptance, acc_info = d.acceptance, None
    if acceptance is not None and acceptance.sdsl is not None:
        acceptance, acc_info = sdsl_alpha(acceptance, draft, target, variant, f"{f}.acceptance")
    engine = resolve_engine(d, base, f)
    spec = d.strategy != "ar"
    mem = _target_memory(d, f, target, gpu, draft, draft_tp, gamma, dedicated, engine, w)
    draft_mem = handshake = None
    if dedicated:
        draft_mem = _dedicated_draft_memory(d, f, draft, draft_gpu, draft_tp, gamma, engine, w)
        # The replica holds what both caches hold: the draft keeps KV for the same sequences.
        mem = replace(mem, kv_capacity_tokens=min(mem.kv_capacity_tokens, draft_mem.kv_capacity_tokens))
        link = min(gpu.interconnect_gbps, draft_gpu.interconnect_gbps)
        handshake = (Handshake(d.handshake_s) if d.handshake_s is not None
                     else Handshake.from_link(link, gamma, target.vocab))
    tl = make_latency(d.latency, target, gpu, d.tp, d.dtype, base, f"{f}.latency", w.target_format)
    dcfg, dfield = (d.latency, "latency") if d.draft_latency is None else (d.draft_latency, "draft_latency")
    dl = (make_latency(dcfg, draft, draft_gpu, draft_tp, w.draft_dtype, base, f"{f}.{dfield}",
                       w.draft_format) if draft else None)
    if serving.replaces_backend_overheads(engine):
        tl = EngineLatency(tl, engine, n_layers=target.n_layers, tp=d.tp, vocab=target.vocab,
                           bandwidth=gpu.bandwidth_tbps * 1e12, role="target", gamma=gamma if spec else 0)
        if dl is not None:
            dl = EngineLatency(dl, engine, n_layers=draft.n_layers, tp=draft_tp, vocab=draft.vocab,
                               bandwidth=draft_gpu.bandwidth_tbps * 1e12, role="draft", gamma=gamma)
    n_draft = draft_tp if dedicated else 0
    name = d.name if variant == "alpha" else f"{d.name}[{variant}]"
    return ResolvedDeployment(name, d.strategy, target, draft, gpu, d.tp, draft_tp, d.replicas,
                              d.router, gamma, acceptance, d.scheduler, d.dtype, mem, tl, dl,
                              _price(d, gpu, draft_gpu, n_draft), d.placement, n_draft,
                              draft_gpu if dedicated else None, draft_mem,
                              handshake, _ssd_config(d), acceptance_sdsl=acc_info,
                              variant_of=d.name if d.acceptance is not None and d.acceptance.band else None,
                              engine=engine, weights=w, warnings=_warnings(target, draft, f))


def _warnings(target: ModelArch, draft: ModelArch | None, f: str) -> tuple[str, ...]:
    """Settings that run but that a real engine would not serve as given."""
    if draft is not None and draft.vocab != target.vocab:
        return (f"{f}.draft: {draft.name} has a vocabulary of {draft.vocab:,} tokens and "
                f"{target.name} {target.vocab:,}: the target verifies the draft's token ids, so "
                "the two must share a tokenizer; alpha for this pair is hypothetical",)
    return ()


def resolve_engine(d: Deployment, base: Path, f: str) -> serving.EngineCosts:
    """The deployment's engine costs: a preset (default "vllm"; "ideal" under the `ideal`
    latency backend, SDSL's cost model, which has no engine), a calibration file written by
    `specsim calibrate-engine`, and field overrides."""
    e = d.engine
    try:
        if e.calibrated is not None:
            costs = load_calibrated(_path(e.calibrated, base), f"{f}.engine.calibrated")
        else:
            name = e.preset or ("ideal" if d.latency.backend == "ideal" else "vllm")
            costs = engine_presets.preset(name)
        return engine_presets.with_overrides(costs, e.params) if e.params else costs
    except SpecsimError as err:
        msg = str(err)
        raise SpecsimError(msg if msg.startswith(f) else f"{f}.{msg}") from None


def _path(p: str, base: Path) -> Path:
    q = Path(p)
    return q if q.is_absolute() or not (base / q).exists() else base / q


def _ssd_config(d: Deployment) -> SSDConfig | None:
    """The SSD settings of an ssd deployment, defaults filled in (None for other strategies)."""
    return (d.ssd or SSDConfig()) if d.strategy == "ssd" else None


def _dedicated_draft_memory(d: Deployment, f: str, draft: ModelArch, gpu: GPU, tp: int,
                            gamma: int, engine: serving.EngineCosts, w: Weights) -> MemoryPlan:
    """Memory plan of a dedicated draft's GPU(s): its weights, activations and KV, and for SSD
    the KV of the tree branches (max_num_seqs * sum(F_k) * gamma tokens)."""
    sch = d.scheduler
    branches = 1
    if d.strategy == "ssd":
        branches = _ssd_config(d).fanout.branches(gamma)
    reserve = activation_reserve_bytes(draft, tp, sch.max_num_batched_tokens, sch.max_num_seqs,
                                       max(branches, gamma + 1), w.draft_dtype, engine)
    reserve += sch.max_num_seqs * branches * gamma * draft.kv_bytes_per_token(tp, w.draft_dtype)
    graphs, non_torch = engine_overhead_bytes(engine, tp, 1, True)
    mem = plan_memory(draft, gpu, tp, w.draft_dtype, d.gpu_memory_utilization, reserve,
                      block_size=sch.block_size, graph_bytes=graphs, non_torch_bytes=non_torch,
                      quant=w.draft_format)
    _check_block_fits(mem, sch.block_size, f)
    if mem.kv_budget_gb <= 0:
        raise SpecsimError(
            f"{f}.draft_gpu: draft {draft.name} does not fit on {tp} dedicated {gpu.label}: per GPU, "
            f"weights {mem.target_weights_gb:.1f} GB + activation/tree reserve "
            f"{mem.activation_reserve_gb:.1f} GB exceed usable {mem.usable_gb:.1f} GB; raise "
            "draft_gpus or pick a larger draft_gpu")
    return mem


def load_calibrated(path, field: str) -> serving.EngineCosts:
    """Engine costs saved by `specsim calibrate-engine`: {"preset": name, "params": {...}, ...}
    (the fitted fields over the named preset)."""
    p = Path(path)
    if not p.is_file():
        raise SpecsimError(f"{field}: no engine calibration at {p}")
    try:
        data = load_user_json(p, "engine calibration")
    except SpecsimError as e:
        raise SpecsimError(f"{field}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("preset"), str) \
            or not isinstance(data.get("params", {}), dict):
        raise SpecsimError(f"{field}: {p} must hold {{'preset': name, 'params': {{...}}}}")
    return engine_presets.with_overrides(engine_presets.preset(data["preset"]), data.get("params", {}))
