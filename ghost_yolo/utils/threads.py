"""How many torch threads CPU training gets: every physical core, unless the user said otherwise.

Ultralytics' ``select_device`` sets ``cpu_count - 1`` threads for CPU work, so on a 2-core machine training computes on
one core while the other idles (the data loads in the main process on CPU, ``workers=0``). The convolutions of a small
model scale to the physical cores; logical (SMT) siblings share their core's vector units and only add contention.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ("physical_cores", "training_threads", "user_omp_threads")


def physical_cores() -> int:
    """Physical cores this process may run on (the affinity mask bounds it; SMT siblings count once)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or usable
    except ImportError:
        physical = usable
    logical = os.cpu_count() or usable
    per_core = max(1, logical // max(physical, 1))  # SMT threads per core
    return max(1, min(physical, usable // per_core if usable >= per_core else usable))


def user_omp_threads() -> str:
    """The ``OMP_NUM_THREADS`` the user started the process with, not the 1 that importing Ultralytics sets where it
    is unset: the process's start environment (Linux), else what ``ghost_yolo`` read before importing Ultralytics."""
    try:
        start = dict(v.split(b"=", 1) for v in Path("/proc/self/environ").read_bytes().split(b"\0") if b"=" in v)
        return start.get(b"OMP_NUM_THREADS", b"").decode().strip()
    except OSError:
        return os.environ.get("GHOST_USER_OMP_THREADS", "").strip()


def training_threads(requested: int | None) -> tuple[int, str]:
    """``(threads, why)`` for CPU training: ``OMP_NUM_THREADS`` when the user set it, else ``threads=`` when > 0, else
    every physical core."""
    env = user_omp_threads()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    if requested and int(requested) > 0:
        return int(requested), "threads="
    return physical_cores(), "one per physical core"
