"""Clean accuracy on the first N test points."""
from __future__ import annotations

import numpy as np
import torch

from ..stats import accuracy_with_ci
from .base import EvalContext, StageResult


class CleanStage:
    name = "clean"
    reads: tuple[str, ...] = ()

    def run(self, ctx: EvalContext) -> StageResult:
        preds = []
        bs = ctx.batch_size
        n = len(ctx.data)
        model = ctx.model.checked(self.name)
        with torch.no_grad():
            for i in ctx.progress(range(0, n, bs), total=(n + bs - 1) // bs, desc="clean", unit="batch"):
                x = ctx.data.floats(slice(i, i + bs), ctx.model.device)
                preds.append(model(x, ctx.data.index[i : i + bs]).argmax(1).cpu())
        pred = torch.cat(preds).numpy()
        correct = pred == ctx.data.y.numpy()
        acc, ci = accuracy_with_ci(correct)
        return StageResult(
            summary={"clean_accuracy": acc, "clean_accuracy_ci95": list(ci)},
            arrays={"clean_correct": correct, "clean_pred": pred.astype(np.int16)},
        )
