"""Trust diagnostics: can the robust accuracy be believed? (see :mod:`harness.diagnostics`)

What runs, on the same N points as the other stages:
- a randomized-forward check (repeated passes on the first batch);
- the hand-written attack ladder: FGSM and PGD-20 (cross-entropy, random start, seeded), compared
  with AutoAttack's robust accuracy when the ``autoattack`` stage ran: ``weak-attack-gap`` and
  ``catastrophic-overfitting`` flags;
- AutoAttack's own check messages (recorded by the ``autoattack`` stage) as named ``aa-*`` flags,
  and the fraction of points with an exactly zero input gradient (``zero-gradients``);
- on the first :data:`N_LOCAL` points: gradient alignment in the eps-ball, the top eigenvalue of the
  input Hessian (Lanczos on finite differences with a step of 0.1 x the threat ball's L2 radius,
  i.e. the curvature within the ball, see :func:`harness.diagnostics.linearity.fd_step_for`) and
  the empirical local Lipschitz constant of the logits (Yang et al. 2020; test points only: the
  harness has no training data);
- for MNIST in the official test order: the data separation of the evaluated points from the
  training set (Yang et al. 2020), read from the precomputed exact table
  ``harness/diagnostics/mnist_separation.npz``; ``half_min`` is the largest radius at which a
  perfectly robust and accurate classifier exists on these points.

The summary goes into the record under ``diagnostics``; the per-example arrays are
``diagnostics_{fgsm,pgd}_robust`` (booleans) and ``diagnostics_{grad_alignment,curvature,
lipschitz,separation}`` (float32, NaN where not computed).

Work split (:mod:`harness.stages.base`): ``map`` runs the attacks and the local measures on one
block, with the block's seed (so with one block, N <= batch_size, the seeds are the submission's);
the randomized-forward check and the training-set Lipschitz constant run with block 0; ``reduce``
computes the accuracies, means and flags from the full arrays and AutoAttack's summary.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from harness.core.errors import HarnessError
from harness.stages.blocks import Block

from .base import BlockResult, EvalContext, Stage, StageResult

N_LOCAL = 100
PGD_STEPS = 20
LANCZOS_K = 10


def _json(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def separation_distances(ctx: EvalContext, rows: slice | np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """(per-point distances to the training set, or None with the reason) for the evaluated points
    ``rows`` (positions in ``ctx.data``), from the precomputed exact MNIST table."""
    from harness.data.registry import find

    from ..diagnostics.separation import mnist_table

    spec = find(ctx.data.dataset)
    if spec is None or not spec.separation_table:
        return None, f"computed for MNIST only (dataset {ctx.data.dataset})"
    if not (ctx.data.source.startswith("bundled:") or ctx.data.source.startswith("torchvision-folder:")):
        return None, f"data source {ctx.data.source} is not the official MNIST test set"
    table = mnist_table()
    if table is None:
        return None, "the precomputed table harness/diagnostics/mnist_separation.npz is missing"
    idx = np.asarray(ctx.data.index[rows])
    if idx.size and (idx.max() >= len(table["distance_255"])
                     or not np.array_equal(table["labels"][idx].astype(np.int64), ctx.data.y[rows].numpy())):
        return None, "the evaluated labels do not match the precomputed MNIST table"
    return table["distance_255"][idx].astype(np.float64) / 255.0, None


def separation_summary(dist: np.ndarray) -> dict:
    """The separation summary of the evaluated points' distances, with the full test set's."""
    from ..diagnostics.separation import mnist_table, summarize

    table = mnist_table()
    summary = summarize(dist, n_train=60000)
    summary.pop("argmin")
    full = summarize(table["distance_255"].astype(np.float64) / 255.0, n_train=60000)
    full.pop("argmin")
    summary.update(source="precomputed exact table (harness.diagnostics.separation)",
                   full_test_set=full)
    return summary


class DiagnosticsStage(Stage):
    name = "diagnostics"
    uses = ("clean", "autoattack")

    def map(self, ctx: EvalContext, block: Block, prepared) -> BlockResult:
        from ..diagnostics import (
            attack_ladder,
            detect_randomized,
            gradient_alignment,
            input_hessian_top_eigenvalue,
            local_lipschitz,
            zero_gradient_fraction,
        )
        from ..diagnostics.linearity import fd_step_for

        module, device = ctx.model.checked(self.name), ctx.model.device
        n, bs, eps, norm, seed = len(ctx.data), ctx.batch_size, ctx.eps, ctx.norm, block.seed
        k = len(block)
        x = ctx.data.floats(block.slice, device)
        y = ctx.data.labels(block.slice, device)
        extras: dict[str, Any] = {}
        if block.index == 0:
            extras["randomized"] = detect_randomized(module, x[: min(k, bs)], batch_size=bs)

        lad = attack_ladder(module, x, y, eps, norm, pgd_steps=PGD_STEPS, seed=seed, batch_size=bs)
        extras["n_clean"] = int(lad["flags"]["clean"].sum())
        extras["n_zero_gradient"] = round(zero_gradient_fraction(module, x, y, batch_size=bs) * k) if k else 0

        # local measures on the first N_LOCAL points of the evaluation
        m = min(n, N_LOCAL)
        mb = max(0, min(block.stop, m) - block.start)
        ga_b = np.full(k, np.nan)
        cu_b = np.full(k, np.nan)
        li_b = np.full(k, np.nan)
        if mb:
            xl, yl = x[:mb], y[:mb]
            ga = gradient_alignment(module, xl, yl, eps, norm, seed=seed, batch_size=bs)
            h = fd_step_for(eps, norm, int(xl[0].numel()))
            cu = input_hessian_top_eigenvalue(module, xl, yl, k=LANCZOS_K, h=h or 1e-2, seed=seed, batch_size=bs)
            li = local_lipschitz(module, xl, eps, norm, seed=seed, batch_size=bs)
            ga_b[:mb], cu_b[:mb], li_b[:mb] = ga["per_example"], cu["per_example"], li["per_example"]
            extras["n_ga_zero"] = round(ga["zero_gradient_fraction"] * mb)
            extras["curvature"] = {"k": cu["k"], "h": cu["h"]}
            extras["lipschitz"] = {key: li[key] for key in ("output", "steps", "step_size", "init_radius")}
        if block.index == 0:
            extras["lipschitz_train"], extras["train_source"] = None, None
            from harness.data.loaders import load_train_images

            train = load_train_images(ctx.data.dataset, m, data_dir=ctx.options.data_dir,
                                      npz=ctx.options.train_data)
            if train is not None and m:
                x_train, extras["train_source"] = train
                if tuple(x_train.shape[1:]) != tuple(ctx.data.input_shape):
                    raise HarnessError(f"training images have shape {tuple(x_train.shape[1:])}, "
                                       f"test images {tuple(ctx.data.input_shape)}")
                li_train = local_lipschitz(module, x_train.to(device=device, dtype=torch.float32) / 255.0,
                                           eps, norm, seed=seed, batch_size=bs)
                extras["lipschitz_train"] = li_train["mean"]

        sep, extras["separation_skipped"] = separation_distances(ctx, block.slice)
        arrays = {
            "diagnostics_fgsm_robust": np.asarray(lad["flags"]["fgsm"], dtype=bool),
            "diagnostics_pgd_robust": np.asarray(lad["flags"]["pgd"], dtype=bool),
            # float64 here, so that reduce's means are the ones of a single pass; float32 in the record
            "diagnostics_grad_alignment": ga_b,
            "diagnostics_curvature": cu_b,
            "diagnostics_lipschitz": li_b,
            "diagnostics_separation": sep if sep is not None else np.full(k, np.nan),
        }
        return BlockResult(arrays, _json(extras))

    def reduce(self, ctx: EvalContext, arrays, extras) -> StageResult:
        from ..diagnostics import classify_autoattack_messages, ladder_flags, randomized_model_flag, zero_gradient_flag
        from ..diagnostics.linearity import _summary

        n, eps, norm, seed = len(ctx.data), ctx.eps, ctx.norm, ctx.seed
        first = extras[0]
        flags = []
        rnd = first["randomized"]
        if (f := randomized_model_flag(rnd)) is not None:
            flags.append(f)

        fgsm_rob = arrays["diagnostics_fgsm_robust"].astype(bool)
        pgd_rob = arrays["diagnostics_pgd_robust"].astype(bool)
        lad = {"n": n, "pgd_steps": PGD_STEPS, "clean": sum(int(e["n_clean"]) for e in extras) / n,
               "fgsm": int(fgsm_rob.sum()) / n, "pgd": int(pgd_rob.sum()) / n}
        clean_correct = ctx.array("clean", "clean_correct")
        if clean_correct is not None:  # the clean stage's verdict is the record's
            fgsm_rob, pgd_rob = fgsm_rob & clean_correct, pgd_rob & clean_correct
            lad["fgsm"], lad["pgd"] = float(fgsm_rob.mean()), float(pgd_rob.mean())
        aa = ctx.results.get("autoattack")
        aa_acc = aa.summary.get("robust_accuracy") if aa is not None else None
        aa_checks = (aa.summary.get("autoattack") or {}).get("checks", []) if aa is not None else []
        flags += ladder_flags(lad, aa_acc)
        # the harness's own note about switching to the rand version is covered by randomized-model
        flags += classify_autoattack_messages([m for m in aa_checks if not m.startswith("harness:")])
        zero = sum(int(e["n_zero_gradient"]) for e in extras) / n
        if (f := zero_gradient_flag(zero, n)) is not None:
            flags.append(f)

        m = min(n, N_LOCAL)
        ga = _summary(arrays["diagnostics_grad_alignment"].astype(np.float64)[:m])
        ga["zero_gradient_fraction"] = sum(int(e.get("n_ga_zero", 0)) for e in extras) / m
        cu = {**_summary(arrays["diagnostics_curvature"].astype(np.float64)[:m]), **first["curvature"]}
        li_values = arrays["diagnostics_lipschitz"].astype(np.float64)[:m]
        li = {"mean": float(li_values.mean()), "median": float(np.median(li_values)), "n": int(m),
              **first["lipschitz"]}
        li_train = first.get("lipschitz_train")
        sep_reason = next((e["separation_skipped"] for e in extras if e.get("separation_skipped")), None)
        sep_dist = arrays["diagnostics_separation"].astype(np.float64)
        sep = separation_summary(sep_dist) if sep_reason is None else None

        def stats(res: dict, *keys: str) -> dict:
            return {k: res[k] for k in ("mean", "median", "n", *keys) if k in res}

        summary = {
            "ladder": {"n": n, "eps": eps, "norm": norm, "seed": seed, "clean": lad["clean"],
                       "fgsm": lad["fgsm"], f"pgd{PGD_STEPS}": lad["pgd"], "autoattack": aa_acc},
            "flags": [f.to_dict() for f in flags],
            "randomized": rnd,
            "zero_gradient_fraction": zero,
            "gradient_alignment": stats(ga, "n_finite", "zero_gradient_fraction"),
            "curvature": stats(cu, "n_finite", "k", "h"),
            "lipschitz": {**stats(li, "output", "steps", "step_size", "init_radius"),
                          "test": li["mean"],
                          "train": li_train,
                          "gap": li["mean"] - li_train if li_train is not None else None,
                          "train_source": first.get("train_source"),
                          "note": ("mean over the first points of each split; gap = test - train"
                                   if li_train is not None
                                   else "test points only: pass --train-data (or --data-dir) for the train/test gap")},
            "separation": sep,
        }
        if sep is None:
            summary["separation_skipped"] = sep_reason
        out = {
            "diagnostics_fgsm_robust": fgsm_rob,
            "diagnostics_pgd_robust": pgd_rob,
            "diagnostics_grad_alignment": arrays["diagnostics_grad_alignment"].astype(np.float32),
            "diagnostics_curvature": arrays["diagnostics_curvature"].astype(np.float32),
            "diagnostics_lipschitz": arrays["diagnostics_lipschitz"].astype(np.float32),
            "diagnostics_separation": sep_dist.astype(np.float32) if sep is not None else np.full(n, np.nan,
                                                                                                  np.float32),
        }
        return StageResult(summary={"diagnostics": _json(summary)}, arrays=out)
