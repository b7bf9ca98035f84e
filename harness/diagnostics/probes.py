"""Model probes: measurements on the model itself that the flag rules (:mod:`.rules`) judge.

- :func:`detect_randomized`: do repeated forward passes on the same inputs agree?
- :func:`autoattack_version_for`: the AutoAttack version to run (``rand`` for a randomized model),
  with the ``randomized-model`` flag;
- :func:`zero_gradient_fraction`: the fraction of points whose input gradient is exactly zero.
"""
from __future__ import annotations

import torch

from harness.record.schema import Flag

from ._common import batches, flat_norm, input_gradient
from .rules import RANDOMIZED_TOLERANCE, randomized_model_flag

__all__ = ["detect_randomized", "autoattack_version_for", "zero_gradient_fraction"]


@torch.no_grad()
def detect_randomized(model: torch.nn.Module, x: torch.Tensor, *, n_passes: int = 5,
                      tolerance: float = RANDOMIZED_TOLERANCE, batch_size: int = 256) -> dict:
    """Run ``n_passes`` forward passes on the same inputs and compare them.

    Returns ``{"randomized": bool, "max_diff": float, "prediction_changes": int}``: ``max_diff`` is
    the largest L2 distance between the L2-normalised logits of two passes (AutoAttack's measure),
    and the model counts as randomized if it exceeds ``tolerance`` or any prediction changes.
    """
    outs = []
    for _ in range(max(2, int(n_passes))):
        o = torch.cat([model(x[s]) for s in batches(x.shape[0], batch_size)])
        o = o.reshape(o.shape[0], -1).float()
        outs.append(o / (o.norm(dim=1, keepdim=True) + 1e-10))
    preds = [o.argmax(1) for o in outs]
    max_diff = 0.0
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            max_diff = max(max_diff, float((outs[i] - outs[j]).norm(dim=1).max().item()))
    changes = int(sum(int((p != preds[0]).sum().item()) for p in preds[1:]))
    return {"randomized": bool(max_diff > tolerance or changes > 0), "max_diff": max_diff,
            "prediction_changes": changes}


def autoattack_version_for(model: torch.nn.Module, x: torch.Tensor, *, n_passes: int = 5,
                           requested: str = "standard",
                           batch_size: int = 256) -> tuple[str, list[Flag]]:
    """Call before AutoAttack: ``("rand", [randomized-model flag])`` if the model is randomized,
    else ``(requested, [])``."""
    res = detect_randomized(model, x, n_passes=n_passes, batch_size=batch_size)
    flag = randomized_model_flag(res)
    if flag is None:
        return requested, []
    return "rand", [flag]


def zero_gradient_fraction(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           batch_size: int = 256) -> float:
    """Fraction of points whose input gradient of the cross-entropy loss is exactly zero."""
    if x.shape[0] == 0:
        return float("nan")
    zero = 0
    for s in batches(x.shape[0], batch_size):
        g = input_gradient(model, x[s], y[s])
        zero += int((flat_norm(g, "Linf") == 0).sum().item())
    return zero / x.shape[0]
