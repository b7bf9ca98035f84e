"""Compute accounting: inference FLOPs and parameters (fvcore), and training FLOPs.

Convention: fvcore counts one multiply-add as one FLOP (a WideResNet-28-10 at 32x32 is 5.25 G).
Papers such as Bartoldson et al. (2024) count two per multiply-add; :func:`to_fvcore_convention`
converts their numbers.

The training-cost arithmetic (multipliers, reported methods, training FLOPs) is pure Python and lives in
:mod:`harness.compute.training_cost`, so that the leaderboard build imports no torch; its names are re-exported
here, where they were first defined.

Operators fvcore does not know are reported as ``skipped`` (``FlopCount.skipped``, the record's
``flops_skipped_ops``). :data:`EXTRA_OP_HANDLES` adds handles for the ones that do multiply-add work:

- ``aten::scaled_dot_product_attention`` (the fused attention of today's timm and
  ``torch.nn.functional``): QKᵀ and the attention-weighted sum AV, ``B·H·L·S·(D_qk + D_v)``
  multiply-adds, what fvcore counts for the same attention written as two matmuls (the softmax,
  scaling and masking are elementwise and uncounted, as fvcore leaves elementwise ops uncounted);
- ``aten::linalg_vector_norm``, ``aten::var``, ``aten::var_mean``, ``aten::std``: one multiply-add
  per input element (each element is squared and accumulated: ``acc += x·x``); XCiT normalises its
  queries and keys with it.

The other operators the reported rows list as skipped do no multiply-add work: elementwise
arithmetic and activations (``add``, ``sub``, ``mul``, ``div``, ``rsub``, ``pow``, ``sqrt``,
``gelu``, ``silu``, ``sigmoid``, ``softmax``, ``cos``, ``sin``, ``log``, ``abs``, ``sign``,
``clamp_min``), additions only (``avg_pool2d``, ``adaptive_avg_pool1d``, ``mean``), or no arithmetic
(``pad``, ``repeat``, ``expand_as``, ``ones_like``, ``one_hot``, ``argmax``, ``topk``). They stay
uncounted and listed, as fvcore's convention has it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from harness.record.schema import FLOPS_CONVENTION


def _shape(value) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(value)
    if shape is None:
        raise ValueError("fvcore: an input of unknown shape")
    return list(shape)


def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """``aten::scaled_dot_product_attention(query, key, value, ...)``: query ``(*batch, L, D_qk)``,
    key ``(*batch, S, D_qk)``, value ``(*batch, S, D_v)`` (batch dimensions broadcast): QKᵀ is
    ``batch·L·S·D_qk`` multiply-adds and AV ``batch·L·S·D_v``. fvcore has no handle for it (it
    counts the explicit ``q @ k.transpose(-2, -1)`` and ``attn @ v`` through aten::matmul)."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = torch.broadcast_shapes(tuple(q[:-2]), tuple(k[:-2]), tuple(v[:-2]))
    n = math.prod(batch) if batch else 1
    length, source = q[-2], k[-2]
    return int(n * length * source * (q[-1] + v[-1]))


def squares_flop_jit(inputs: list, outputs: list) -> int:
    """Norms and variances: one multiply-add per input element (``acc += x·x``)."""
    return int(math.prod(_shape(inputs[0])))


#: handles fvcore lacks, for operators that do multiply-add work (see the module docstring)
EXTRA_OP_HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
    "aten::linalg_vector_norm": squares_flop_jit,
    "aten::var": squares_flop_jit,
    "aten::var_mean": squares_flop_jit,
    "aten::std": squares_flop_jit,
}


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
    analysis = FlopCountAnalysis(model.eval(), x).set_op_handle(**EXTRA_OP_HANDLES)
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
