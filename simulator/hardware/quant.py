"""Weight formats: the bytes a GEMM's weight matrix occupies, unquantized or weight-only quantized.

Weight-only quantization stores the transformer layers' GEMM weights in few bits plus the scales
(and zero points) needed to dequantize them; activations, the KV cache, embeddings, the LM head
and norms stay in the model's dtype (vLLM quantizes LinearBase layers only: AWQConfig and the
compressed-tensors schemes return no method for embeddings; GPTQ's lm_head_quantized defaults to
False). For a (k in, n out) weight matrix:

    bytes = k * n * bits / 8 + scales * (scale_bytes + zero_bits / 8)
    scales = ceil(k / group_size) * n   (group-wise), or n (one per output channel)

Formats and their sources:
- awq: 4-bit, group 128, an fp16 scale and a packed 4-bit zero point per group: 4.156 bits a
  weight. AWQ (Lin et al., arXiv 2306.00978) uses INT4 with group size 128; vLLM's
  vllm/model_executor/layers/quantization/awq.py (AWQLinearMethod.create_weights) allocates
  qweight int32 [k, n/8], qzeros int32 [k/group, n/8] and scales [k/group, n] in params dtype.
- gptq: 4-bit, group 128, symmetric (an fp16 scale per group, no zero point): 4.125 bits a
  weight, the "0.125 bits storage overhead of the group scales" in the Marlin README
  (github.com/IST-DASLab/marlin); GPTQ (Frantar et al., arXiv 2210.17323) checkpoints at
  group 128, run by vLLM's Marlin path (compressed_tensors_wNa16.py: is_sym=True, scales
  [n, k/group]).
- int8 (W8A16): 8-bit, one fp16 scale per output channel, symmetric. vLLM
  compressed_tensors_wNa16.py (WNA16_SUPPORTED_BITS = [4, 8]; strategy "channel": group_size -1,
  weight_scale [n, 1] in params dtype), run by Marlin.
- int4: the awq format (the one of the two 4-bit formats with more bytes).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightFormat:
    """How a GEMM's weights are stored. bits 0 = unquantized: the model's dtype."""

    name: str
    bits: int = 0
    group_size: int | None = None  # weights per scale along k; None: one scale per output channel
    scale_bytes: float = 2.0  # fp16 scales
    zero_bits: int = 0  # packed zero point per scale (asymmetric formats)

    @property
    def quantized(self) -> bool:
        return self.bits > 0

    def gemm_bytes(self, k: float, n: float, dtype_bytes: float) -> float:
        """Bytes of a (k in, n out) weight matrix in this format (dtype_bytes when unquantized)."""
        if not self.quantized:
            return k * n * dtype_bytes
        scales = n * (-(-k // self.group_size) if self.group_size else 1)
        return k * n * self.bits / 8 + scales * (self.scale_bytes + self.zero_bits / 8)

    def bytes_per_weight(self, k: float = 8192, n: float = 8192, dtype_bytes: float = 2.0) -> float:
        """Average bytes a weight costs, scales included, for a (k, n) matrix."""
        return self.gemm_bytes(k, n, dtype_bytes) / (k * n)


NONE = WeightFormat("none")
AWQ = WeightFormat("awq", bits=4, group_size=128, zero_bits=4)
GPTQ = WeightFormat("gptq", bits=4, group_size=128)
INT8 = WeightFormat("int8", bits=8, group_size=None)

WEIGHT_FORMATS: dict[str, WeightFormat] = {
    "none": NONE, "int8": INT8, "int4": AWQ, "awq": AWQ, "gptq": GPTQ,
}


def weight_format(name: str) -> WeightFormat:
    """The registered format `name`; KeyError names the known ones."""
    try:
        return WEIGHT_FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown quantization {name!r}; known: {', '.join(WEIGHT_FORMATS)}") from None
