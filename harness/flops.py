"""Compute accounting: inference FLOPs and parameters (fvcore), and training FLOPs.

Convention: fvcore counts one multiply-add as one FLOP (a WideResNet-28-10 at 32x32 is 5.25 G).
Papers such as Bartoldson et al. (2024) count two per multiply-add; :func:`to_fvcore_convention`
converts their numbers.

Training FLOPs, when not declared, are estimated as

    forward FLOPs x examples seen x method multiplier

with forward = 1, backward = 2 (gradients for activations and for weights, each about one forward),
and one attack step = one forward + one input-gradient backward = 2 (no weight gradients needed):

- standard: 1 + 2 = 3
- PGD-K: K attack steps (2K) + forward and backward on the adversarial batch (3) = 2K + 3
- TRADES-K: one clean forward for the KL target (1) + K steps (2K) + forward and backward on the
  clean and the adversarial batch (3 + 3) = 2K + 7   (K = 10 gives 27, as Bartoldson et al.)
- FGSM: PGD with K = 1 = 5
- IBP: the interval pass propagates a centre and a radius (2 forwards) plus the clean forward of the
  mixed loss (1), each with its backward (x3) = 9
- CROWN-IBP: IBP (2) + clean (1) + a CROWN backward pass from the (C-1)-row margin specification,
  which costs about C-1 forwards, all with backward: 3 (C + 2)
- other: no estimate; declare ``training.declared_flops``.

Examples seen = epochs x examples_per_epoch (default: the training-set size + extra_data).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .record import FLOPS_CONVENTION, TrainingFlopsRecord

TRAIN_SET_SIZE = {"mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}


@dataclass
class FlopCount:
    total: float
    params: int
    by_operator: dict[str, float]
    skipped: dict[str, int] = field(default_factory=dict)
    convention: str = FLOPS_CONVENTION


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_inference_flops(model: nn.Module, input_shape: tuple[int, ...], device: str | torch.device = "cpu") -> FlopCount:
    """fvcore's count for one input of shape ``input_shape`` (no batch dimension)."""
    from fvcore.nn import FlopCountAnalysis

    x = torch.zeros((1, *input_shape), device=device)
    analysis = FlopCountAnalysis(model.eval(), x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    # fvcore logs skipped operators as warnings; we report them in the record instead.
    logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)
    total = float(analysis.total())
    by_op = {k: float(v) for k, v in sorted(analysis.by_operator().items())}
    skipped = {str(k): int(v) for k, v in sorted(analysis.unsupported_ops().items())}
    return FlopCount(total=total, params=count_params(model), by_operator=by_op, skipped=skipped)


def to_fvcore_convention(flops: float, convention: str) -> float:
    """Convert a FLOP count to fvcore's 1-per-multiply-add convention."""
    if convention.startswith("2"):
        return flops / 2.0
    if convention.startswith("1"):
        return flops
    raise ValueError(f"unknown FLOP convention {convention!r}")


def method_multiplier(method: str, attack_steps: int, num_classes: int) -> float | None:
    k = attack_steps
    return {
        "standard": 3.0,
        "pgd": 2.0 * k + 3,
        "trades": 2.0 * k + 7,
        "fgsm": 5.0,
        "ibp": 9.0,
        "crown-ibp": 3.0 * (num_classes + 2),
    }.get(method)


def training_flops(training, dataset: str, forward_flops: float | None, num_classes: int) -> TrainingFlopsRecord:
    """``training`` is the submission's :class:`harness.submission.Training`."""
    if training.declared_flops is not None:
        value = to_fvcore_convention(training.declared_flops, training.declared_flops_convention)
        return TrainingFlopsRecord(
            value=value, source="declared", convention=FLOPS_CONVENTION,
            formula=f"declared by the submission ({training.declared_flops:.4g}, {training.declared_flops_convention})",
        )
    mult = method_multiplier(training.method, training.attack_steps, num_classes)
    per_epoch = training.examples_per_epoch
    if per_epoch is None and dataset in TRAIN_SET_SIZE:
        per_epoch = TRAIN_SET_SIZE[dataset] + training.extra_data
    if mult is None or training.epochs is None or per_epoch is None or forward_flops is None:
        missing = [n for n, v in (("a known method multiplier", mult), ("training.epochs", training.epochs),
                                  ("training.examples_per_epoch", per_epoch), ("inference FLOPs", forward_flops))
                   if v is None]
        return TrainingFlopsRecord(value=None, source="unknown", convention=FLOPS_CONVENTION,
                                   formula="cannot estimate without " + ", ".join(missing)
                                   + "; declare training.declared_flops")
    seen = float(training.epochs) * per_epoch
    return TrainingFlopsRecord(
        value=forward_flops * seen * mult, source="estimated", convention=FLOPS_CONVENTION,
        multiplier=mult, examples_seen=seen, forward_flops=forward_flops,
        formula=f"forward FLOPs x examples seen x multiplier ({training.method}"
        + (f", K={training.attack_steps}" if training.method in ("pgd", "trades") else "")
        + f": {mult:g}) = {forward_flops:.4g} x {seen:.4g} x {mult:g}",
    )
