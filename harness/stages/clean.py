"""Clean accuracy on the first N test points."""
from __future__ import annotations

import numpy as np
import torch

from harness.core.stats import accuracy_with_ci
from harness.stages.blocks import Block

from .base import BlockResult, EvalContext, Stage, StageResult


class CleanStage(Stage):
    name = "clean"

    def map(self, ctx: EvalContext, block: Block, prepared) -> BlockResult:
        model = ctx.model.checked(self.name)
        with torch.no_grad():
            x = ctx.data.floats(block.slice, ctx.model.device)
            pred = model(x, ctx.data.index[block.slice]).argmax(1).cpu().numpy()
        correct = pred == ctx.data.y[block.slice].numpy()
        return BlockResult({"clean_correct": correct, "clean_pred": pred.astype(np.int16)})

    def reduce(self, ctx: EvalContext, arrays, extras) -> StageResult:
        correct = arrays["clean_correct"].astype(bool)
        acc, ci = accuracy_with_ci(correct)
        return StageResult(
            summary={"clean_accuracy": acc, "clean_accuracy_ci95": list(ci)},
            arrays={"clean_correct": correct, "clean_pred": arrays["clean_pred"].astype(np.int16)},
        )
