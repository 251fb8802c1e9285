"""Teachers for OST: which layers they speak at, how their features are captured, and the external-teacher handle.

With ``teacher=`` empty the teacher is the model's own float self (``float_self``). The default, ``frozen``, is a
copy of the float model as the quantized phase starts (quantizers bypassed, fp32), kept frozen (``freeze_float_self``);
``cotrain`` runs the float self with its own trained BatchNorm set; ``shared`` runs the student itself with every
quantizer bypassed (``float_mode``), without gradient, its BatchNorm normalising with the batch but leaving the running
statistics to the student pass (``bn_stats_frozen``). ``teacher=path.pt`` loads a frozen float model of the same
architecture instead (the reference's way).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.nn.modules import Concat, Detect
from ultralytics.utils import LOGGER

from ghost_yolo.quant.apply import float_mode, set_quant_enabled

__all__ = (
    "freeze_float_self",
    "ExternalTeacher",
    "bn_stats_frozen",
    "capture_features",
    "default_kd_layers",
    "feature_channels",
    "load_teacher",
    "native_bf16_cpu",
    "parse_kd_layers",
    "teacher_autocast",
)


def _head_index(model: nn.Module) -> int:
    """Index of the first Detect head in ``model.model`` (every layer before it may be distilled)."""
    for i, m in enumerate(model.model):
        if isinstance(m, Detect):
            return i
    return len(model.model)


def default_kd_layers(model: nn.Module) -> list[int]:
    """The backbone and neck outputs, as in the paper, less the layers that only repeat others' features.

    ``nn.Upsample`` and ``Concat`` outputs are functions of layers that are distilled already, so they are skipped;
    ``kd_layers=all`` keeps them.
    """
    return [i for i, m in enumerate(model.model[: _head_index(model)])
            if not isinstance(m, (nn.Upsample, Concat)) and any(True for _ in m.parameters())]


def parse_kd_layers(spec: Any, model: nn.Module) -> list[int]:
    """``kd_layers`` to sorted layer indices: empty (default), ``all``, a list or a comma-separated string of indices."""
    head = _head_index(model)
    if spec is None or spec == "" or spec == []:
        return default_kd_layers(model)
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return list(range(head))
        spec = [s for s in spec.strip("[]() ").replace(",", " ").split() if s]
    if isinstance(spec, int):
        spec = [spec]
    try:
        layers = sorted({int(i) for i in spec})
    except (TypeError, ValueError) as e:
        raise ValueError(f"kd_layers={spec!r}: give layer indices like kd_layers=[2,4,6], or 'all'") from e
    missing = [i for i in layers if not 0 <= i < head]
    if missing:
        raise ValueError(f"kd_layers names layer(s) {missing} that the model does not have before its head: "
                         f"distillable layers are 0-{head - 1} ('ghost info' lists them)")
    if not layers:
        raise ValueError("kd_layers is empty: name at least one layer, or pass kd=none to turn distillation off")
    return layers


@contextmanager
def capture_features(model: nn.Module, layers: Sequence[int]) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs of ``model.model[i]`` for ``layers`` during the block (in ``layers`` order).

    Hooks are removed when the block ends, so no hook stays on the model (EMA copies and checkpoints pickle it).
    """
    found: dict[int, torch.Tensor] = {}
    handles = [model.model[i].register_forward_hook(lambda m, a, out, i=i: found.__setitem__(i, out)) for i in layers]
    feats: list[torch.Tensor] = []
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()
        feats.extend(found[i] for i in layers if i in found)


@contextmanager
def bn_stats_frozen(model: nn.Module) -> Iterator[None]:
    """BatchNorm normalises with the batch (training mode) but neither reads nor updates its running statistics."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    try:
        for bn in bns:
            bn.track_running_stats = False
        yield
    finally:
        for bn in bns:
            bn.track_running_stats = True


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where a bf16 conv is about twice as fast."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def _cpu_autocast_on() -> bool:
    """Whether a CPU autocast region is active (``is_autocast_enabled(device_type)`` needs torch >= 2.4)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:
        return torch.is_autocast_cpu_enabled()


def teacher_autocast(device: torch.device, bf16: bool | None = None) -> contextlib.AbstractContextManager:
    """The precision of the teacher pass: bfloat16 on CPUs that have it (``bf16=None``: auto), else as the step runs.

    The teacher only supplies targets without gradient: on trained vedai-synth models its bf16 features move the summed
    OST distance by < 0.1 % of the W8 student-teacher distance, and the pass takes about half the time on CPU. This is
    what AMP does for the teacher on GPU (fp16), and like AMP the trainer turns it off with ``amp=False``. Inside an
    autocast region already (GPU AMP, ``amp=bf16``) the step's precision is kept.
    """
    if device.type != "cpu" or _cpu_autocast_on():
        return contextlib.nullcontext()
    if bf16 is None:
        bf16 = native_bf16_cpu()
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.no_grad()
def feature_channels(model: nn.Module, layers: Sequence[int], imgsz: int = 64) -> list[int]:
    """Output channels of ``layers`` from a dry forward on zeros (eval mode, quantizers bypassed: no state changes)."""
    p = next(model.parameters())
    ch = int(model.yaml.get("channels", 3))
    training = model.training
    try:
        model.eval()
        with float_mode(model), capture_features(model, layers) as feats:
            model.predict(torch.zeros(1, ch, imgsz, imgsz, device=p.device, dtype=p.dtype))
    finally:
        model.train(training)
    return [int(f.shape[1]) for f in feats]


class ExternalTeacher:
    """Holds a frozen teacher outside the student's state: EMA copies and checkpoints do not carry it.

    A plain attribute of the distiller (not a submodule), so it is not in the optimizer, the state dict or the
    parameter count; ``deepcopy`` and pickling give an empty handle, and the trainer loads the teacher again from
    ``teacher=`` when it resumes.
    """

    def __init__(self, module: nn.Module | None = None, path: str | None = None, own: bool = False):
        """Wrap ``module`` (frozen, eval mode, no gradients) loaded from ``path``; ``own``: it is the student's own
        float self frozen at the quantized start (``float_self=frozen``), not a ``teacher=`` checkpoint."""
        self.module, self.path, self.own = module, path, own
        if module is not None:
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def __bool__(self) -> bool:
        """True when a teacher is held."""
        return self.module is not None

    def __deepcopy__(self, memo: dict) -> ExternalTeacher:
        """EMA copies get an empty handle (only the training model distils)."""
        return ExternalTeacher()

    def __reduce__(self) -> tuple:
        """Checkpoints store an empty handle, never the teacher's weights."""
        return ExternalTeacher, ()


def load_teacher(path: str | Path, student: nn.Module, layers: Sequence[int], device: torch.device | str = "cpu",
                 head: bool = False) -> ExternalTeacher:
    """Load ``teacher=path.pt`` and check it can teach ``student`` one-to-one at ``layers``: same input channels,
    same layer count and the same channels at every distilled layer, and with ``head`` (class-score or box losses)
    the same classes and box bins; a clear error names the first mismatch."""
    from ultralytics.nn.tasks import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher={path}: file not found (a float checkpoint of the same architecture, e.g. "
                                "runs/detect/train/weights/best.pt)")
    try:
        teacher, _ = load_checkpoint(path, device="cpu")
    except Exception as e:
        raise ValueError(f"teacher={path}: not a readable Ultralytics checkpoint ({e})") from e
    teacher = teacher.float()
    set_quant_enabled(teacher, False)  # a quantized checkpoint teaches with its float weights
    t_ch, s_ch = int(teacher.yaml.get("channels", 3)), int(student.yaml.get("channels", 3))
    if t_ch != s_ch:
        raise ValueError(f"teacher={path} takes {t_ch} input channels, the student {s_ch}: train the teacher on the "
                         "same modality")
    if len(teacher.model) != len(student.model):
        raise ValueError(f"teacher={path} has {len(teacher.model)} layers, the student {len(student.model)}: OST pairs "
                         "layers one-to-one, so the teacher must have the student's architecture")
    t_c, s_c = feature_channels(teacher, layers), feature_channels(student, layers)
    for i, a, b in zip(layers, t_c, s_c):
        if a != b or type(teacher.model[i]).__name__ != type(student.model[i]).__name__:
            raise ValueError(f"teacher={path} differs from the student at layer {i}: "
                             f"{type(teacher.model[i]).__name__} with {a} channels vs "
                             f"{type(student.model[i]).__name__} with {b}; use a teacher of the same model YAML")
    if head:
        t_head, s_head = teacher.model[-1], student.model[-1]
        t_names, s_names = getattr(teacher, "names", None), getattr(student, "names", None)
        if getattr(t_head, "nc", None) != getattr(s_head, "nc", None):
            raise ValueError(f"teacher={path} predicts {getattr(t_head, 'nc', '?')} classes, the student "
                             f"{getattr(s_head, 'nc', '?')}: class-score and box distillation (kd=cls, dfl, cwd) "
                             "compare heads class by class, so the teacher must be trained on the same classes")
        if isinstance(t_names, dict) and isinstance(s_names, dict) and list(t_names.values()) != list(s_names.values()):
            LOGGER.warning(f"teacher={path} names its classes {list(t_names.values())[:4]}..., the data "
                           f"{list(s_names.values())[:4]}...: head distillation pairs them by index")
        if getattr(t_head, "reg_max", None) != getattr(s_head, "reg_max", None):
            raise ValueError(f"teacher={path} has reg_max={t_head.reg_max}, the student {s_head.reg_max}: box "
                             "distillation (kd=dfl) needs the same box distribution bins")
    return ExternalTeacher(teacher.to(device), str(path))


def freeze_float_self(model: nn.Module) -> bool:
    """``float_self=frozen``: the model's float self as it is now (quantizers bypassed, fp32) becomes its distiller's
    frozen teacher; nothing to do for other teachers or one already frozen. Returns whether it froze one."""
    from copy import deepcopy

    distiller = getattr(model, "distiller", None)
    if distiller is None or distiller.float_self != "frozen" or distiller.teacher or not distiller.enabled:
        return False
    snapshot = deepcopy(model)
    del snapshot.distiller
    set_quant_enabled(snapshot, False)
    distiller.teacher = ExternalTeacher(snapshot.float(), None, own=True)
    return True
