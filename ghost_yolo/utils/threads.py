"""How many torch threads CPU training gets: every physical core, unless the user said otherwise.

Ultralytics' ``select_device`` sets ``cpu_count - 1`` threads for CPU work, so on a 2-core machine training computes on
one core while the other idles (the data loads in the main process on CPU, ``workers=0``). The convolutions of a small
model scale to the physical cores; logical (SMT) siblings share their core's vector units and only add contention.
Cores that other processes keep busy are left to them: torch's threads wait for each other at every op, so a thread
that shares its core with another busy process stalls all of them (on a 2-core machine with one core busy, two
threads trained several times slower than one).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ("busy_cores", "physical_cores", "training_threads", "user_omp_threads")


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


def busy_cores(seconds: float = 0.3) -> float:
    """Logical CPUs of this process's share that other processes kept busy over ``seconds``, as a count; 0.0 where the
    system does not tell. ``/proc/stat`` counts the whole machine, so its busy fraction is applied to the CPUs this
    process may run on (in a container pinned to 2 of 64 CPUs, a busy host does not read as 30 busy cores here); this
    process sleeps through the sample."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:  # cpu  user nice system idle iowait irq softirq steal ...
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle (idle + iowait)

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = total1 - total0
    return 0.0 if total <= 0 else max(0.0, 1 - (idle1 - idle0) / total) * _usable_cpus()


def _usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask; all of them where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def training_threads(requested: int | None) -> tuple[int, str]:
    """``(threads, why)`` for CPU training: ``OMP_NUM_THREADS`` when the user set it, else ``threads=`` when > 0, else
    one per physical core that other processes leave idle (at least one)."""
    env = user_omp_threads()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    if requested and int(requested) > 0:
        return int(requested), "threads="
    cores = physical_cores()
    per_core = max(1, _usable_cpus() // cores)  # SMT threads per physical core
    busy = busy_cores() / per_core
    idle = max(1, min(cores, round(cores - busy)))
    if idle < cores:
        return idle, (f"one per idle physical core: other processes keep {busy:.1f} of {cores} busy; threads={cores} "
                      "uses them all")
    return cores, "one per physical core"
