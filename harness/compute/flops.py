"""Compute accounting: inference FLOPs and parameters (fvcore), and training FLOPs.

Convention: fvcore counts one multiply-add as one FLOP (a WideResNet-28-10 at 32x32 is 5.25 G).
Papers such as Bartoldson et al. (2024) count two per multiply-add; :func:`to_fvcore_convention`
converts their numbers.

The training-cost arithmetic (multipliers, reported methods, training FLOPs) is pure Python and lives in
:mod:`harness.compute.training_cost`, so that the leaderboard build imports no torch; its names are re-exported
here, where they were first defined.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from harness.record.schema import FLOPS_CONVENTION


@dataclass
class FlopCount:
    total: float
    params: int  # parameters of the modules the forward pass calls
    by_operator: dict[str, float]
    skipped: dict[str, int] = field(default_factory=dict)
    convention: str = FLOPS_CONVENTION
    params_unused: int = 0  # parameters of modules the forward pass never calls (e.g. kept for old checkpoints)


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_inference_flops(model: nn.Module, input_shape: tuple[int, ...],
                          device: str | torch.device = "cpu") -> FlopCount:
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
    unused = _unused_params(model, analysis.uncalled_modules())
    return FlopCount(total=total, params=count_params(model) - unused, by_operator=by_op, skipped=skipped,
                     params_unused=unused)


def _unused_params(model: nn.Module, uncalled: set[str]) -> int:
    """Parameters held only by modules the traced forward never called (robustbench's WideResNet
    with ``sub_block1=True`` keeps a whole unused block for checkpoint compatibility; it costs no
    FLOPs and is not part of the model's size). A parameter shared with a called module counts
    as used."""
    if not uncalled:
        return 0
    mods = dict(model.named_modules())
    used = set()
    for name, m in mods.items():
        if name not in uncalled:
            used.update(id(p) for p in m.parameters(recurse=False))
    seen, n = set(), 0
    for name in uncalled:
        m = mods.get(name)
        if m is None:
            continue
        for p in m.parameters(recurse=False):
            if id(p) not in used and id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
    return int(n)
