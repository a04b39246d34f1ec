"""GPU catalogue: datasheet figures (dense, no sparsity) and dated default rental prices.

Prices are dated defaults, never constants a result silently depends on: a scenario can
override them.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GPU:
    """Datasheet figures (dense, no sparsity) and a dated default rental price."""

    name: str
    label: str
    hbm_gb: float  # decimal GB
    bandwidth_tbps: float  # HBM TB/s
    bf16_tflops: float
    fp8_tflops: float | None
    interconnect: str
    interconnect_gbps: float  # datasheet figure, GB/s, bidirectional per GPU
    price_per_gpu_hour: float
    price_date: str = "2026-11"
    notes: str = field(default="", compare=False)

    def peak_flops(self, dtype: str = "bf16") -> float:
        if dtype == "fp8":
            if self.fp8_tflops is None:
                raise ValueError(f"{self.label} has no FP8 tensor cores")
            return self.fp8_tflops * 1e12
        if dtype == "fp32":
            return self.bf16_tflops * 1e12 / 2  # TF32 tensor-core rate, half of BF16 on these parts
        return self.bf16_tflops * 1e12

    @property
    def ridge_flop_per_byte(self) -> float:
        """Arithmetic intensity at which BF16 GEMMs turn compute-bound (MODEL.md section 5)."""
        return self.bf16_tflops * 1e12 / (self.bandwidth_tbps * 1e12)


# Prices: representative on-demand cloud list prices per GPU-hour, November 2026. They vary 2-5x
# between providers and months (MODEL.md section 8): override with price_per_gpu_hour.
GPUS: dict[str, GPU] = {
    g.name: g
    for g in [
        GPU("h100-sxm", "H100 SXM", 80, 3.35, 989, 1979, "NVLink4", 900, 2.99),
        GPU("h100-pcie", "H100 PCIe", 80, 2.0, 756, 1513, "PCIe5", 128, 2.49),
        GPU("h200-sxm", "H200 SXM", 141, 4.8, 989, 1979, "NVLink4", 900, 3.79),
        GPU("b200", "B200", 180, 8.0, 2250, 4500, "NVLink5", 1800, 5.99),
        GPU("a100-80gb-sxm", "A100 80GB SXM", 80, 2.04, 312, None, "NVLink3", 600, 1.79),
        GPU("l40s", "L40S", 48, 0.864, 362, 733, "PCIe4", 64, 1.29),
        GPU("l4", "L4", 24, 0.30, 121, 242, "PCIe4", 64, 0.69),
        GPU("mi300x", "MI300X", 192, 5.3, 1307, 2615, "Infinity Fabric", 896, 2.49),
        GPU("mi325x", "MI325X", 256, 6.0, 1307, 2615, "Infinity Fabric", 896, 2.99),
    ]
}
