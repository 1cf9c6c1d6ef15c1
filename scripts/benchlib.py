"""What the benchmark scripts share about the processes they measure: CPU time and memory, from /proc.

Both read another process by pid without touching it, so a benchmark can measure a server it started
(and one process can measure itself with ``os.getpid()``). Linux only, like the benchmarks.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_cpu_s", "process_rss_bytes"]


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int:
    """Resident memory of a process now (``VmRSS`` in /proc/<pid>/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid} (a zombie?)")
