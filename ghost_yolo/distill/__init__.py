"""Self-distillation: the quantized student taught by its own full-precision weights (GHOST's GQSD with OST and SCM)."""

from .ost import OSTDistiller, attention_value, layer_distance
from .scm import logistic_noise, scm_gate
from .teacher import (
    ExternalTeacher,
    capture_features,
    default_kd_layers,
    feature_channels,
    load_teacher,
    native_bf16_cpu,
    parse_kd_layers,
    teacher_autocast,
)

__all__ = (
    "ExternalTeacher",
    "OSTDistiller",
    "attention_value",
    "capture_features",
    "default_kd_layers",
    "feature_channels",
    "layer_distance",
    "load_teacher",
    "logistic_noise",
    "native_bf16_cpu",
    "parse_kd_layers",
    "scm_gate",
    "teacher_autocast",
)
