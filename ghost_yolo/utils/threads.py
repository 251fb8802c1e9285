"""How many torch threads CPU training gets: every physical core, unless the user said otherwise.

Ultralytics' ``select_device`` sets ``cpu_count - 1`` threads for CPU work, so on a 2-core machine training computes on
one core while the other idles (the data loads in the main process on CPU, ``workers=0``). The convolutions of a small
model scale to the physical cores; logical (SMT) siblings share their core's vector units and only add contention.
"""

from __future__ import annotations

import os

__all__ = ("physical_cores", "training_threads")


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


def training_threads(requested: int | None) -> tuple[int, str]:
    """``(threads, why)`` for CPU training: ``OMP_NUM_THREADS`` when set, else ``threads=`` when > 0, else every
    physical core."""
    env = os.environ.get("GHOST_USER_OMP_THREADS", "").strip()  # the user's, not the 1 Ultralytics' import sets
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    if requested and int(requested) > 0:
        return int(requested), "threads="
    return physical_cores(), "one per physical core"
