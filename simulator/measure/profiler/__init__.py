"""`specsim profile`: per-operator profiles measured on this machine.

grid.py (which points), timing.py (how they are timed), machine.py (what this machine is),
bench.py (the timed callables), capture.py (the capture itself). The names below are the
package's interface.
"""
from simulator.measure.profiler.capture import (ATTENTION_BACKEND, CaptureOptions, _allreduce_rows,
                                                capture_profile)
from simulator.measure.profiler.grid import GRIDS, Grid
from simulator.measure.profiler.machine import (_cache_bytes, _copies, _device_info, default_device_name,
                                                n_copies, rotation)
from simulator.measure.profiler.timing import _in_context_row, _InContextAttention, steady_cpu_allocator

__all__ = ["ATTENTION_BACKEND", "GRIDS", "CaptureOptions", "Grid", "_InContextAttention",
           "_allreduce_rows", "_cache_bytes", "_copies", "_device_info", "_in_context_row",
           "capture_profile", "default_device_name", "n_copies", "rotation", "steady_cpu_allocator"]
