"""Per-model precision of a deployment: each model's dtype and weight format, checked.

`dtype` sets the target's compute, activation and KV dtype; `draft_dtype` (default: dtype) the
draft's. `quantization: {target, draft}` stores a model's GEMM weights weight-only quantized
(simulator/hardware/quant.py); its activations and KV stay in its dtype, which must then be 16-bit
(the weight-only kernels take fp16/bf16 activations). A draft must weigh less than its target in
bytes, so the target's own architecture quantized (e.g. int4 drafting for bf16) is a valid draft.
"""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import SpecsimError
from simulator.hardware.gpus import GPU
from simulator.hardware.models import ModelArch
from simulator.hardware.quant import NONE, WeightFormat, weight_format
from simulator.config.schema import Deployment

# Activation dtypes the weight-only kernels take (vLLM: AWQConfig.get_supported_act_dtypes and
# the Marlin schemes accept torch.half / torch.bfloat16 activations only).
WEIGHT_ONLY_ACT_DTYPES = ("bf16", "fp16")


@dataclass(frozen=True)
class Weights:
    """Each model's dtype and weight format, with the user's quantization names."""

    dtype: str
    draft_dtype: str
    target_format: WeightFormat = NONE
    draft_format: WeightFormat = NONE
    target_quant: str = "none"
    draft_quant: str = "none"

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "draft_dtype": self.draft_dtype,
                "quantization": {"target": self.target_quant, "draft": self.draft_quant}}

    @property
    def default(self) -> bool:
        """True for one dtype and no quantization (what every deployment was before)."""
        return (self.dtype == self.draft_dtype and self.target_quant == "none"
                and self.draft_quant == "none")


def _format(name: str, dtype: str, field: str, dtype_field: str) -> WeightFormat:
    try:
        fmt = weight_format(name)
    except KeyError as e:
        raise SpecsimError(f"{field}: {e.args[0]}") from None
    if fmt.quantized and dtype not in WEIGHT_ONLY_ACT_DTYPES:
        raise SpecsimError(f"{field}: {name} is weight-only (16-bit activations); {dtype_field} "
                           f"must be bf16 or fp16, got {dtype}")
    return fmt


def resolve_weights(d: Deployment, f: str, target: ModelArch, draft: ModelArch | None,
                    gpu: GPU, draft_gpu: GPU) -> Weights:
    """Check and bind each model's precision; `draft_gpu` is the GPU the draft runs on."""
    draft_dtype = d.draft_dtype or d.dtype
    q = d.quantization
    tf = _format(q.target, d.dtype, f"{f}.quantization.target", "dtype")
    df = _format(q.draft, draft_dtype, f"{f}.quantization.draft",
                 "draft_dtype" if d.draft_dtype else "dtype")
    if d.dtype == "fp8" and gpu.fp8_tflops is None:
        raise SpecsimError(f"{f}.dtype: {gpu.label} has no FP8 tensor cores")
    if draft is not None and draft_dtype == "fp8" and draft_gpu.fp8_tflops is None:
        field = "draft_dtype" if d.draft_dtype else "dtype"
        raise SpecsimError(f"{f}.{field}: the draft's {draft_gpu.label} has no FP8 tensor cores")
    w = Weights(d.dtype, draft_dtype, tf, df, q.target, q.draft)
    if draft is not None:
        tb, db = target.weight_bytes(d.dtype, tf), draft.weight_bytes(draft_dtype, df)
        if db >= tb:
            raise SpecsimError(
                f"{f}.draft: draft {draft.name} ({_label(draft_dtype, q.draft)}, {db / 1e9:.3g} GB "
                f"of weights) must be smaller than target {target.name} ({_label(d.dtype, q.target)}, "
                f"{tb / 1e9:.3g} GB) in weight bytes; pick a smaller draft or quantize it "
                "(quantization.draft: int4)")
    return w


def _label(dtype: str, quant: str) -> str:
    return dtype if quant == "none" else f"{quant} weights, {dtype}"
