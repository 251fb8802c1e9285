"""One grid per tensor (``grids=tensor``): which convs read a tensor that is already on a producer's grid.

Integer runtimes keep a network in integers only where every tensor between two integer ops has one quantization
grid that its producer writes and all its consumers read (onnxruntime fuses ``DequantizeLinear -> Conv ->
QuantizeLinear`` into ``QLinearConv``, and passes Split, MaxPool and Resize through in integers only when their input
and output grids are the same). ``grids=tensor`` therefore quantizes each conv block's output after its activation
(ReLU then folds into the integer conv) and each residual sum, and a conv that reads such a tensor, directly or
through ops that keep the grid (chunk/split views, max pooling, nearest upsampling), reads it as it is instead of
rounding it to a grid of its own. Convs that read anything else (a concatenation, the image, a float op) keep their
own 8-bit input grid, which is what the runtime quantizes there.

The links are found by running the model once and following tensors: a view shares its base's storage, and the
grid-keeping modules pass their input's grid on.
"""

from __future__ import annotations

import torch
from torch import nn

from ghost_yolo.nn.qconv import QConv2d, QuantAct

__all__ = ("FOLDING_ACTS", "GRID_KEEPING", "TENSOR_GRID_ACTS", "tensor_grid_ready", "tie_inputs")

GRID_KEEPING = (nn.MaxPool2d, nn.Upsample)  # modules whose output lies on their input's grid (nearest upsampling)
FOLDING_ACTS = (nn.ReLU, nn.ReLU6, nn.Identity)  # activations a runtime folds into the integer conv before its Q
TENSOR_GRID_ACTS = (*FOLDING_ACTS, nn.SiLU)  # SiLU: as an integer sigmoid (lookup table) and an integer product


def _acts(model: nn.Module) -> list[nn.Module]:
    """The activation of every conv block (unwrapped from its output grid)."""
    from ultralytics.nn.modules import Conv

    out = []
    for m in model.modules():
        if isinstance(m, Conv):
            act = m.act.act if isinstance(m.act, QuantAct) else m.act
            out.append(act)
    return out


def tensor_grid_ready(model: nn.Module, folding: bool = False) -> str | None:
    """None when every conv block's activation can run in integers (``folding``: folds into the integer conv: ReLU,
    ReLU6, none; else SiLU too), else the reason."""
    ok = FOLDING_ACTS if folding else TENSOR_GRID_ACTS
    other = sorted({type(a).__name__ for a in _acts(model) if not isinstance(a, ok)})
    return None if not other else (f"its conv blocks use {', '.join(other)} (grids=tensor needs act: ReLU, ReLU6 or "
                                   "SiLU)")


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@torch.no_grad()
def tie_inputs(model: nn.Module, ch: int, imgsz: int = 64) -> dict[str, str]:
    """Tie every conv whose input lies on a producer's output grid to that producer (``QConv2d.tie``), in place;
    returns ``{conv name: producer name}``. Other convs are untied. One forward pass at ``imgsz`` with the quantizers
    as they are (the links do not depend on them)."""
    names = {id(m): n for n, m in model.named_modules()}
    on_grid: dict[int, QuantAct] = {}  # storage -> the quantizer whose grid that tensor is on
    alive: list[torch.Tensor] = []  # keeps traced tensors alive, so no storage address is reused during the pass
    ties: dict[str, str] = {}

    def first_tensor(args) -> torch.Tensor | None:
        x = args[0] if args else None
        return x if isinstance(x, torch.Tensor) else None

    def produced(m: nn.Module, args, out) -> None:
        if isinstance(out, torch.Tensor):
            alive.append(out)
            if isinstance(m, QuantAct) and m.post:
                on_grid[_storage(out)] = m
            elif isinstance(m, GRID_KEEPING) and (x := first_tensor(args)) is not None and _storage(x) in on_grid:
                on_grid[_storage(out)] = on_grid[_storage(x)]

    def consumed(m: QConv2d, args) -> None:
        x = first_tensor(args)
        producer = on_grid.get(_storage(x)) if x is not None else None
        m.tie(producer)
        if producer is not None:
            ties[names[id(m)]] = names[id(producer)]

    hooks = [m.register_forward_hook(produced) for m in model.modules() if isinstance(m, (QuantAct, *GRID_KEEPING))]
    hooks += [m.register_forward_pre_hook(consumed) for m in model.modules() if isinstance(m, QConv2d)]
    training = model.training
    try:
        model.eval()
        p = next(model.parameters())
        model(torch.zeros(1, ch, imgsz, imgsz, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    return ties
