"""CPU training keeps freed memory for reuse (glibc): fewer page faults, nesting, and the trainer's use of it."""

from __future__ import annotations

import resource

import pytest
import torch

from ghost_yolo.engine.trainer import GhostTrainer
from ghost_yolo.utils import allocator
from ghost_yolo.utils.allocator import reuse_freed_memory

glibc = pytest.mark.skipif(allocator._glibc() is None, reason="mallopt is glibc's")


def _faults(n: int = 3, mb: int = 64) -> int:
    """Minor page faults of allocating, touching and freeing ``n`` blocks of ``mb`` MB."""
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        t = torch.empty(mb << 18).fill_(1.0)
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0


@glibc
def test_freed_blocks_are_reused_without_page_faults():
    """Inside the block freed 64 MB blocks (always mmap'ed, so faulted in anew, by default glibc) are reused: of six
    allocations at most two fault their pages in (the heap may still be growing around other allocations)."""
    pages = (64 << 20) // resource.getpagesize()
    with reuse_freed_memory() as on:
        assert on and allocator._depth == 1
        _faults(8)  # the heap grows to hold the block
        assert _faults(6) <= 2 * pages
        with reuse_freed_memory() as inner:  # nested blocks keep the setting when they end
            assert inner and allocator._depth == 2
        assert allocator._depth == 1 and _faults(6) <= 2 * pages
    assert allocator._depth == 0


def test_disabled_or_not_glibc_is_a_no_op(monkeypatch):
    """enabled=False (and a C library that is not glibc) changes nothing and says so."""
    with reuse_freed_memory(False) as on:
        assert on is False and allocator._depth == 0
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    with reuse_freed_memory() as on:
        assert on is False and allocator._depth == 0


def test_trainer_reuses_memory_on_cpu_only(monkeypatch):
    """GhostTrainer runs Ultralytics' loop inside the block on CPU, and outside it on other devices."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    monkeypatch.setattr(DetectionTrainer, "_do_train", lambda self: allocator._depth)
    trainer = GhostTrainer.__new__(GhostTrainer)  # only the device matters here
    trainer.device = torch.device("cpu")
    assert trainer._do_train() == (1 if allocator._glibc() else 0)
    trainer.device = torch.device("cuda")
    assert trainer._do_train() == 0
