"""GPU catalogue: datasheet figures (dense, no sparsity) and dated default rental prices.

Prices are dated defaults, never constants a result silently depends on: a scenario can
override them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

GiB = 2**30
MiB = 2**20

# What the device reports as its total memory, per catalogue GPU: (bytes, source). vLLM reads
# torch.cuda.mem_get_info()[1] (cudaMemGetInfo); NVML/nvidia-smi reports a few hundred MiB more
# on the same part, so a CUDA-side reading is preferred where one was found. Readings printed in
# GiB with two decimals carry +-5 MiB. "UNVERIFIED" marks entries no device reading backs.
REPORTED_HBM_BYTES: dict[str, tuple[int, str]] = {
    "h100-sxm": (int(79.11 * GiB),
                 "CUDA total 79.11 GiB: PyTorch OOM text 'GPU 0 has a total capacity of 79.11 GiB' on "
                 "H100 80GB, https://github.com/vllm-project/vllm/issues/27508 (nvidia-smi shows "
                 "81559 MiB, https://github.com/NVIDIA/nccl/issues/1264)"),
    "h100-pcie": (int(79.11 * GiB),
                  "UNVERIFIED: no H100 PCIe reading found; taken equal to h100-sxm (both 80 GiB parts)"),
    "h200-sxm": (143771 * MiB,
                 "UNVERIFIED: nvidia-smi 143771 MiB as quoted in the issue-16 brief; no device "
                 "reading found in the searched corpora (datasheet: 141 GB)"),
    "b200": (int(178.35 * GiB),
             "CUDA totalGlobalMem 178.35 GiB printed by a device query, "
             "https://github.com/pytorch/ao/pull/4002"),
    "a100-80gb-sxm": (int(79.25 * GiB),
                      "CUDA total 79.25 GiB: PyTorch OOM text '(GPU 0; 79.25 GiB total capacity' on "
                      "an A100, https://github.com/levihsu/OOTDiffusion/issues/235 (nvidia-smi: "
                      "81920 MiB, https://github.com/modal-labs/modal-client/pull/2797)"),
    "a100-40gb": (42298834944,
                  "CUDA deviceQuery 'Total amount of global memory: 40339 MBytes (42298834944 bytes)' "
                  "A100-SXM4-40GB, https://github.com/bottlerocket-os/bottlerocket/pull/3873"),
    "l40s": (46068 * MiB,
             "nvidia-smi (NVML) total 46068 MiB, https://github.com/modal-labs/modal-client/pull/2797; "
             "CUDA reports a few hundred MiB less"),
    "a40": (46068 * MiB,
            "UNVERIFIED: nvidia-smi (NVML) total 46068 MiB as printed for 'NVIDIA A40' (ECC on) in "
            "several public nvidia-smi logs found by text search, none with a citable address; CUDA "
            "reports a few hundred MiB less (datasheet: 48 GB GDDR6 with ECC)"),
    "l4": (23034 * MiB,
           "nvidia-smi (NVML) total 23034 MiB, https://github.com/modal-labs/modal-client/pull/2797; "
           "CUDA reports a few hundred MiB less"),
    "mi300x": (206141652992,
               "rocm-smi 'VRAM Total Memory (B): 206141652992', "
               "https://github.com/ROCm/legacy-rocm-build/issues/4750 (an issue about partitioned-"
               "mode reporting; read as the whole-GPU figure, 191.98 GiB)"),
    "mi325x": (256 * GiB,
               "UNVERIFIED: datasheet 256 GB read as GiB, as MI300X's 192 GB reads 191.98 GiB in rocm-smi; "
               "no device reading found"),
}



@dataclass(frozen=True)
class GPU:
    """Datasheet figures (dense, no sparsity) and a dated default rental price."""

    name: str
    label: str
    hbm_gb: float  # the datasheet's figure (decimal GB as printed; 80 GB parts hold 80 GiB)
    bandwidth_tbps: float  # HBM TB/s
    bf16_tflops: float
    fp8_tflops: float | None
    interconnect: str
    interconnect_gbps: float  # datasheet figure, GB/s, bidirectional per GPU
    price_per_gpu_hour: float
    price_date: str = "2026-11"
    notes: str = field(default="", compare=False)
    # What the device reports (torch.cuda.mem_get_info total), bytes; None: hbm_gb * 1e9.
    reported_bytes: int | None = None

    @property
    def memory_bytes(self) -> float:
        """Total device memory as vLLM sees it (REPORTED_HBM_BYTES for catalogue parts)."""
        return float(self.reported_bytes) if self.reported_bytes is not None else self.hbm_gb * 1e9

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
        # A40: NVIDIA A40 datasheet (https://images.nvidia.com/content/Solutions/data-center/a40/
        # nvidia-a40-datasheet.pdf): 48 GB GDDR6 with ECC, 696 GB/s, BF16 tensor 149.7 TFLOP/s
        # dense (299.4 with sparsity), no FP8 (Ampere), NVLink bridge 112.5 GB/s bidirectional
        # between a PAIR of GPUs, PCIe Gen4 x16 otherwise (64 GB/s as for l40s): the one figure
        # is the NVLink pair's, so tp > 2 all-reduces are optimistic. Price: an ASSUMPTION, not
        # from a dated list (A40 on-demand listings cluster around $0.4-0.5/GPU-h).
        GPU("a40", "A40", 48, 0.696, 149.7, None, "NVLink3", 112.5, 0.49,
            notes="NVIDIA A40 datasheet; NVLink bridge pairs only; price assumed"),
        GPU("l40s", "L40S", 48, 0.864, 362, 733, "PCIe4", 64, 1.29),
        GPU("l4", "L4", 24, 0.30, 121, 242, "PCIe4", 64, 0.69),
        GPU("mi300x", "MI300X", 192, 5.3, 1307, 2615, "Infinity Fabric", 896, 2.49),
        GPU("mi325x", "MI325X", 256, 6.0, 1307, 2615, "Infinity Fabric", 896, 2.99),
    ]
}
GPUS = {k: replace(g, reported_bytes=REPORTED_HBM_BYTES[k][0]) for k, g in GPUS.items()}
