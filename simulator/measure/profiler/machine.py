"""What this machine is: its description for a profile's metadata, the specsim device name,
the last-level cache and the memory a capture may use."""
from __future__ import annotations

import math
import os
import platform
import subprocess

from simulator.errors import SpecsimError
from simulator.hardware.gpus import GPUS
from simulator.hardware.models import BYTES_PER_DTYPE

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
