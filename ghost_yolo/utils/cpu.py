"""The CPU's class for integer kernels, from its flags: what decides how runtimes multiply int8 on x86.

onnxruntime (MLAS) and OpenVINO (oneDNN) multiply uint8 activations by int8 weights with ``vpdpbusd`` (32-bit sums)
on CPUs with VNNI or AMX, but with ``vpmaddubsw`` on AVX2 and AVX512 without VNNI, which adds each pair of products
in 16 bits and saturates: 255 x (|w1| + |w2|) overflows int16 once two weight codes of a pair exceed 128 together.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

__all__ = ("cpu_flags", "cpu_isa", "has_vnni")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read, as on macOS or Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
                          []))


def cpu_isa() -> str:
    """'AMX', 'AVX512-VNNI', 'AVX-VNNI', 'AVX512', 'AVX2', 'pre-AVX2', or 'unknown' (no flags readable)."""
    f = cpu_flags()
    if not f:
        return "unknown"
    return ("AMX" if "amx_int8" in f else "AVX512-VNNI" if "avx512_vnni" in f else "AVX-VNNI" if "avx_vnni" in f
            else "AVX512" if "avx512f" in f else "AVX2" if "avx2" in f else "pre-AVX2")


def has_vnni() -> bool | None:
    """Whether int8 x int8 products accumulate in 32 bits on this CPU (VNNI or AMX); None when unknown (not x86
    Linux): the caller decides."""
    isa = cpu_isa()
    return None if isa == "unknown" else isa in ("AMX", "AVX512-VNNI", "AVX-VNNI")
