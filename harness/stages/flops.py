"""Inference FLOPs and parameters (fvcore) on one input, and training FLOPs."""
from __future__ import annotations

from ..flops import count_inference_flops, training_flops
from .base import EvalContext, StageResult


class FlopsStage:
    name = "flops"
    reads: tuple[str, ...] = ()

    def run(self, ctx: EvalContext) -> StageResult:
        # The wrapped model, normalisation included, as every other stage sees it.
        fc = count_inference_flops(ctx.model.module, ctx.model.input_shape, ctx.model.device)
        passes = ctx.spec.model.forward_passes
        inference = fc.total * passes
        train = training_flops(ctx.spec.training, ctx.spec.dataset, fc.total, ctx.model.num_classes)
        return StageResult(summary={
            "params": fc.params,
            "inference_flops": inference,
            "flops_convention": fc.convention,
            "flops_skipped_ops": fc.skipped,
            "flops_by_operator": fc.by_operator,
            "forward_passes": passes,
            "training_flops": train.model_dump(),
        })
