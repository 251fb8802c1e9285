"""Self-distillation: the quantized student taught by its own full-precision weights (GHOST's GQSD and beyond).

Losses live in one module each and register themselves by name for ``kd=`` (``registry.KD_LOSSES``): ``ost`` (the
paper's OST with the SCM gate), ``cls`` (class scores), ``dfl`` (box distributions), ``cwd`` (channel-wise, on the
head's inputs). ``Distiller`` runs the teacher pass and the chosen losses.
"""

from .cls import ClassScoreLoss, class_score_kl
from .cwd import ChannelWiseLoss, channel_wise_kl
from .dfl import BoxDistributionLoss, box_distribution_kl
from .distiller import FLOAT_SELF_MODES, SCHEDULES, Distiller
from .ost import OSTDistiller, OSTLoss, attention_value, layer_distance
from .auto import AUTO_KD_EVIDENCE, AUTO_KD_WITH_TEACHER, resolve_auto_kd
from .recipe import DistillRecipe
from .registry import KD_LOSSES, KDLoss, PassOutputs, head_outputs, parse_kd, register_kd_loss
from .scm import logistic_noise, scm_gate
from .teacher import (
    ExternalTeacher,
    capture_features,
    default_kd_layers,
    feature_channels,
    freeze_float_self,
    load_teacher,
    native_bf16_cpu,
    parse_kd_layers,
    teacher_autocast,
)

__all__ = (
    "AUTO_KD_EVIDENCE",
    "AUTO_KD_WITH_TEACHER",
    "FLOAT_SELF_MODES",
    "KD_LOSSES",
    "SCHEDULES",
    "BoxDistributionLoss",
    "ChannelWiseLoss",
    "ClassScoreLoss",
    "DistillRecipe",
    "Distiller",
    "ExternalTeacher",
    "KDLoss",
    "OSTDistiller",
    "OSTLoss",
    "PassOutputs",
    "attention_value",
    "box_distribution_kl",
    "capture_features",
    "channel_wise_kl",
    "class_score_kl",
    "default_kd_layers",
    "feature_channels",
    "freeze_float_self",
    "head_outputs",
    "layer_distance",
    "load_teacher",
    "logistic_noise",
    "native_bf16_cpu",
    "parse_kd",
    "parse_kd_layers",
    "register_kd_loss",
    "resolve_auto_kd",
    "scm_gate",
    "teacher_autocast",
)
