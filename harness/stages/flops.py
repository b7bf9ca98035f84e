"""Inference FLOPs and parameters (fvcore) on one input, and training FLOPs: one unit of work, not
per example (done by whichever rank claims it)."""
from __future__ import annotations

from harness.compute.flops import count_inference_flops, count_params
from harness.compute.training_cost import training_flops
from harness.record.schema import FLOPS_CONVENTION, FlopsPart
from harness.stages.blocks import Block

from .base import BlockResult, EvalContext, Stage, StageResult


class FlopsStage(Stage):
    name = "flops"

    def map(self, ctx: EvalContext, block: Block, prepared) -> BlockResult:
        passes = ctx.spec.model.forward_passes
        try:
            # The wrapped model, normalisation included, as every other stage sees it.
            fc = count_inference_flops(ctx.model.module, ctx.model.input_shape, ctx.model.device)
        except Exception as e:  # fvcore's tracer fails on some TorchScript and onnx2torch modules
            reason = f"fvcore cannot analyse this {ctx.model.format} model: {type(e).__name__}: {str(e)[:200]}"
            train = training_flops(ctx.spec.training, ctx.spec.dataset, None, ctx.model.num_classes)
            return BlockResult(extras={"summary": {
                "params": count_params(ctx.model.module), "inference_flops": None,
                "flops_convention": FLOPS_CONVENTION, "flops_error": " ".join(reason.split()),
                "forward_passes": passes, "training_flops": train.model_dump(),
            }})
        inference = fc.total * passes
        train = training_flops(ctx.spec.training, ctx.spec.dataset, fc.total, ctx.model.num_classes)
        return BlockResult(extras={"summary": {
            "params": fc.params,
            "inference_flops": inference,
            "flops_convention": fc.convention,
            "flops_skipped_ops": fc.skipped,
            "flops_by_operator": fc.by_operator,
            "forward_passes": passes,
            "training_flops": train.model_dump(),
        }})

    def reduce(self, ctx: EvalContext, arrays, extras) -> StageResult:
        summary = extras[0]["summary"]
        FlopsPart.model_validate(summary)  # written by the worker: checked before it is believed
        return StageResult(summary=summary)
