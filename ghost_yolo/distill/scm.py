"""SCM, the switch control machine: a per-sample, per-layer hard gate that lets the teacher stay silent.

The gate is a binary-concrete (Gumbel-sigmoid) sample: ``g = 1[sigmoid((logit + noise) / tau) > 0.5]`` where the noise
is logistic (the difference of two Gumbel samples, so an open and a closed gate are equally likely at logit 0), with
the soft value's gradient passed straight through. At eval there is no noise: ``g = 1[logit > 0]``.
"""

from __future__ import annotations

import torch

__all__ = ("logistic_noise", "scm_gate")


def logistic_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard logistic noise shaped like ``like`` (``log u - log(1 - u)``, u uniform), in fp32."""
    u = torch.rand(like.shape, device=like.device, dtype=torch.float32, generator=generator)
    u = u.clamp(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def scm_gate(logits: torch.Tensor, tau: float, training: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Hard 0/1 gates for ``logits`` whose gradient is the soft gate's (straight-through); noiseless at eval.

    Args:
        logits: Gate logits of any shape (B x L in OST: one per sample and distilled layer).
        tau: Temperature of the soft gate; it shapes the gradient only, the hard decision is ``logit + noise > 0``.
        training: Sample logistic noise (training) or decide deterministically (eval).
        generator: Optional RNG for reproducible noise.
    """
    if tau <= 0:
        raise ValueError(f"kd_tau={tau} must be > 0")
    logits = logits.float()
    if not training:
        return (logits > 0).float()
    soft = torch.sigmoid((logits + logistic_noise(logits, generator)) / tau)
    hard = (soft > 0.5).float()
    return hard + (soft - soft.detach())  # exactly 0/1 in value, the soft gradient in backward
