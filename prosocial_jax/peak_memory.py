"""This process's peak resident memory, as the benchmarks and the overhead ablation report it.

Each measured cell runs in a process of its own, so the peak is that cell's. No JAX import here:
a PyTorch reference process measures itself with the same functions.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_bytes() -> int:
    """Peak resident memory in bytes: the kernel's VmHWM on Linux (unlike ru_maxrss it does not
    carry the parent's peak across exec, and `reset_peak_rss` can restart it), else ru_maxrss
    (kilobytes on Linux, bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> int:
    """Restarts the peak counter (VmHWM; Linux only) at the current resident memory and returns
    it, so that a measurement's own set-up is not counted."""
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss_bytes()
