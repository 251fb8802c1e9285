"""Two-process (gloo, CPU) DistributedDataParallel run of ghost's quantized phase: its start and distilled steps.

Ultralytics' own DDP set-up cannot run on CPU (``world_size`` is 0 for ``device=cpu``, ``_setup_ddp`` binds a CUDA/NPU/
XPU device and DDP gets ``device_ids=[index]``), so each spawned rank builds what a DDP worker builds from ghost's own
trainer hooks and Ultralytics' DDP settings:

- ``GhostTrainer.get_model`` (quantized convs switched off, the distiller, a co-trained float self's BatchNorm set),
  each rank from its own random initialisation as Ultralytics seeds ranks (``seed + 1 + RANK``), wrapped in
  ``DistributedDataParallel(find_unused_parameters=True, broadcast_buffers=False)`` as ``_setup_train`` does;
  ``GhostTrainer.build_optimizer``, ``preprocess_batch`` and ``optimizer_step`` (clipping, EMA);
- one float step (quantizers off, distiller idle: its parameters and the quantizers' are unused);
- ``GhostTrainer.start_quantized_phase`` itself, with ``world_size=2``: the EMA's float weights, the HQ search on each
  rank, calibration on each rank's *own* batch, and the broadcast of quantizer state from rank 0;
- three distilled steps (``kd=ost`` with the co-trained float self, whose float pass runs the same weights under
  ``float_mode``; and ``kd=cls+dfl`` with the shared-BatchNorm float self), each rank on its own batch.

Afterwards the bit widths, every parameter (weights, quantizer steps, OST gate, float BatchNorm) and the quantizers'
float buffers are equal on both ranks, and no step raised (no unused-parameter or double-reduction error). A control
shows the test would see a missing broadcast: calibrating again on the ranks' own batches gives different steps.

Not covered: Ultralytics' launcher (``generate_ddp_file``, the pickled trainer, ``torch.distributed.run``), its
distributed dataloader and sampler, AMP and its rank-0 check broadcast, validation and checkpoint saving on rank 0,
``resume``, an external ``teacher=``, the NCCL backend and GPU devices (``benchmarks/gpu_check.py`` runs the real
2-GPU DDP where two GPUs exist). BatchNorm running statistics are per rank, as in Ultralytics (no buffer broadcast).
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from conftest import IMGSZ

WORLD = 2
CONFIGS = (("ost", "cotrain"), ("cls+dfl", "shared"))
STEPS = 3
TIMEOUT = 120  # seconds for the whole two-process run (about 25 s on an idle 2-core machine)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(rank: int, step: int, n: int = 2) -> dict[str, torch.Tensor]:
    """A loader-like batch (uint8 images, YOLO labels), different on every rank and step."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    xy = 0.25 + 0.5 * torch.rand(2 * n, 2, generator=g)
    wh = 0.1 + 0.2 * torch.rand(2 * n, 2, generator=g)
    return {"img": torch.randint(0, 256, (n, 4, IMGSZ, IMGSZ), generator=g, dtype=torch.uint8),
            "cls": torch.randint(0, 8, (2 * n, 1), generator=g).float(), "bboxes": torch.cat((xy, wh), 1),
            "batch_idx": torch.arange(n).repeat_interleave(2).float()}


def _trainer(kd: str, float_self: str, save_dir: Path):
    """A GhostTrainer with the state its hooks read, without the data checks and run-directory set-up of __init__."""
    from types import SimpleNamespace

    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG_DICT

    from ghost_yolo.cfg import ghost_defaults
    from ghost_yolo.engine.trainer import GhostTrainer

    t = GhostTrainer.__new__(GhostTrainer)
    t.args = get_cfg({**DEFAULT_CFG_DICT, **ghost_defaults()},
                     {"bits": "hq", "hq_threshold": 1.0, "kd": kd, "float_self": float_self, "epochs": 2,
                      "fp_epochs": 1, "imgsz": IMGSZ, "plots": False, "amp": False, "multi_scale": 0.0})
    t.data = {"nc": 8, "channels": 4, "names": {i: str(i) for i in range(8)}}
    t.device, t.world_size, t.save_dir = torch.device("cpu"), WORLD, save_dir
    t.wdir, t.best, t.metrics = save_dir, save_dir / "best.pt", {}
    t.stopper, t.start_epoch = SimpleNamespace(best_fitness=None, best_epoch=0), 0
    t.scaler = torch.amp.GradScaler("cuda", enabled=False)
    return t


def _run(rank: int, kd: str, float_self: str, save_dir: Path) -> dict:
    """One configuration on this rank; returns its state for the cross-rank comparison."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    from ultralytics.utils.torch_utils import TORCH_2_13, ModelEMA, unwrap_model

    from ghost_yolo.engine.trainer import GhostTrainer
    from ghost_yolo.quant import FakeQuantizer, calibrate, quant_layers

    t = _trainer(kd, float_self, save_dir)
    torch.manual_seed(1 + rank)  # ranks start from different weights; DDP makes them rank 0's
    model = t.get_model(cfg="ghost-n.yaml", verbose=False)
    model.args = t.args
    t.model = DDP(model, find_unused_parameters=True, **{"forward_sync_buffers" if TORCH_2_13 else "broadcast_buffers":
                                                            False})
    t.optimizer = t.build_optimizer(t.model, name="SGD", lr=0.01, momentum=0.9, decay=5e-4)
    t.ema = ModelEMA(t.model)
    losses = []

    def step(i: int) -> None:
        loss, items = t.model(t.preprocess_batch(_batch(rank, i)))
        loss = loss.sum() * WORLD  # as Ultralytics' loop scales the DDP loss
        loss.backward()
        t.optimizer_step()
        losses.append({k: float(v) for k, v in items.items()})

    step(0)  # float phase: quantizers off, the distiller idle
    t.epoch, t.train_loader = 1, [_batch(rank, 100)]  # calibration batch: each rank's own
    GhostTrainer.start_quantized_phase(t)
    for i in range(1, STEPS + 1):
        step(i)
    net = unwrap_model(t.model)
    quantizers = {n: m for n, m in net.named_modules() if isinstance(m, FakeQuantizer)}
    state = {
        "bits": {n: m.bits for n, m in quant_layers(net).items()},
        "params": {n: p.detach().clone() for n, p in net.named_parameters()},
        "qbuffers": {f"{n}.{b}": v.clone() for n, m in quantizers.items() for b, v in m.named_buffers()
                     if v.is_floating_point()},
        "losses": losses,
        "kd_items": sorted(k for k in losses[-1] if k.startswith(("kd_", "fp_"))),
    }
    calibrate(net, t.preprocess_batch(_batch(rank, 200))["img"])  # control: without a broadcast the ranks differ
    state["control"] = {n: m.input_quant.log_scale.detach().clone() for n, m in quant_layers(net).items()}
    return state


def _worker(rank: int, save_dir: str) -> None:
    """Entry point of a spawned rank: Ultralytics reads RANK at import, so it is set before ghost_yolo is imported."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), YOLO_OFFLINE="1")
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=TIMEOUT))
    try:
        out = {f"{kd}/{fs}": _run(rank, kd, fs, Path(save_dir) / f"{kd}-{fs}-{rank}") for kd, fs in CONFIGS}
        torch.save(out, Path(save_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Run both ranks once (both configurations) and load what each saved."""
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ctx = mp.spawn(_worker, args=(str(tmp),), nprocs=WORLD, join=False)
        deadline = time.time() + TIMEOUT
        while not ctx.join(timeout=5):
            if time.time() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"the two-process DDP run did not finish in {TIMEOUT} s")
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("config", [f"{kd}/{fs}" for kd, fs in CONFIGS])
def test_ddp_quantized_phase_keeps_ranks_equal(ranks, config):
    """Same widths, weights, quantizer steps and buffers on both ranks after the quantized start and distilled steps."""
    r0, r1 = ranks[0][config], ranks[1][config]
    assert r0["bits"] == r1["bits"] and r0["bits"] and min(r0["bits"].values()) < 8
    assert r0["params"].keys() == r1["params"].keys()
    differ = [n for n in r0["params"] if not torch.equal(r0["params"][n], r1["params"][n])]
    assert not differ, f"parameters differ across ranks: {differ[:5]}"
    assert any("weight_quant.log_scale" in n for n in r0["params"])
    if config.endswith("cotrain"):
        assert any(".float_bn." in n for n in r0["params"])  # the float self's BatchNorm trained and stayed in sync
    differ = [n for n in r0["qbuffers"] if not torch.equal(r0["qbuffers"][n], r1["qbuffers"][n])]
    assert not differ, f"quantizer buffers differ across ranks: {differ[:5]}"


@pytest.mark.parametrize("config", [f"{kd}/{fs}" for kd, fs in CONFIGS])
def test_ddp_distilled_steps_ran(ranks, config):
    """The distilled steps produced finite, non-zero distillation losses on both ranks (the distiller was active)."""
    for r in ranks:
        steps = r[config]["losses"]
        assert len(steps) == STEPS + 1
        assert steps[0]["kd_loss"] == 0  # the float phase
        assert all(torch.isfinite(torch.tensor(list(s.values()))).all() for s in steps)
        assert all(s["kd_loss"] > 0 for s in steps[1:])
        if config.endswith("cotrain"):
            assert all(s["fp_loss"] > 0 for s in steps[1:])


def test_ddp_control_sees_rank_differences(ranks):
    """Without the broadcast, calibration on each rank's own batch gives different steps: the check above can fail."""
    c0, c1 = ranks[0]["ost/cotrain"]["control"], ranks[1]["ost/cotrain"]["control"]
    assert any(not torch.equal(c0[n], c1[n]) for n in c0)
