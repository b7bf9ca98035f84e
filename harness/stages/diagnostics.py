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
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import HarnessError
from .base import EvalContext, StageResult

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


def _padded(values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan, dtype=np.float32)
    out[: len(values)] = values
    return out


def separation_for(ctx: EvalContext) -> tuple[dict | None, np.ndarray | None, str | None]:
    """(summary, per-point distances, reason if unavailable) for the evaluated points."""
    from ..diagnostics.separation import mnist_table, summarize

    if ctx.data.dataset != "mnist":
        return None, None, f"computed for MNIST only (dataset {ctx.data.dataset})"
    if not (ctx.data.source.startswith("bundled:") or ctx.data.source.startswith("torchvision-folder:")):
        return None, None, f"data source {ctx.data.source} is not the official MNIST test set"
    table = mnist_table()
    if table is None:
        return None, None, "the precomputed table harness/diagnostics/mnist_separation.npz is missing"
    idx = np.asarray(ctx.data.index)
    if idx.size and (idx.max() >= len(table["distance_255"])
                     or not np.array_equal(table["labels"][idx].astype(np.int64), ctx.data.y.numpy())):
        return None, None, "the evaluated labels do not match the precomputed MNIST table"
    dist = table["distance_255"][idx].astype(np.float64) / 255.0
    summary = summarize(dist, n_train=60000)
    summary.pop("argmin")
    full = summarize(table["distance_255"].astype(np.float64) / 255.0, n_train=60000)
    full.pop("argmin")
    summary.update(source="precomputed exact table (harness.diagnostics.separation)",
                   full_test_set=full)
    return summary, dist, None


class DiagnosticsStage:
    name = "diagnostics"
    reads: tuple[str, ...] = ("clean", "autoattack")

    def run(self, ctx: EvalContext) -> StageResult:
        from ..diagnostics import (
            attack_ladder, classify_autoattack_messages, detect_randomized, gradient_alignment,
            input_hessian_top_eigenvalue, ladder_flags, local_lipschitz, randomized_model_flag,
            zero_gradient_flag, zero_gradient_fraction,
        )
        from ..diagnostics.linearity import fd_step_for

        module, device = ctx.model.checked(self.name), ctx.model.device
        n, bs, eps, norm, seed = len(ctx.data), ctx.batch_size, ctx.eps, ctx.norm, ctx.seed
        x = ctx.data.floats(None, device)
        y = ctx.data.labels(None, device)
        bar = ctx.progress(total=6, desc="diagnostics", unit="step")
        flags = []
        try:
            bar.set_postfix_str("randomness")
            rnd = detect_randomized(module, x[: min(n, bs)], batch_size=bs)
            if (f := randomized_model_flag(rnd)) is not None:
                flags.append(f)
            bar.update(1)

            bar.set_postfix_str("FGSM, PGD-20")
            lad = attack_ladder(module, x, y, eps, norm, pgd_steps=PGD_STEPS, seed=seed, batch_size=bs)
            clean_correct = ctx.array("clean", "clean_correct")
            fgsm_rob, pgd_rob = lad["flags"]["fgsm"], lad["flags"]["pgd"]
            if clean_correct is not None:  # the clean stage's verdict is the record's
                fgsm_rob, pgd_rob = fgsm_rob & clean_correct, pgd_rob & clean_correct
                lad["fgsm"], lad["pgd"] = float(fgsm_rob.mean()), float(pgd_rob.mean())
            aa = ctx.results.get("autoattack")
            aa_acc = aa.summary.get("robust_accuracy") if aa is not None else None
            aa_checks = (aa.summary.get("autoattack") or {}).get("checks", []) if aa is not None else []
            flags += ladder_flags(lad, aa_acc)
            # the harness's own note about switching to the rand version is covered by randomized-model
            flags += classify_autoattack_messages([m for m in aa_checks if not m.startswith("harness:")])
            zero = zero_gradient_fraction(module, x, y, batch_size=bs)
            if (f := zero_gradient_flag(zero, n)) is not None:
                flags.append(f)
            bar.update(1)

            m = min(n, N_LOCAL)
            xl, yl = x[:m], y[:m]
            bar.set_postfix_str("gradient alignment")
            ga = gradient_alignment(module, xl, yl, eps, norm, seed=seed, batch_size=bs)
            bar.update(1)
            bar.set_postfix_str("curvature")
            h = fd_step_for(eps, norm, int(xl[0].numel())) if m else 0.0
            cu = input_hessian_top_eigenvalue(module, xl, yl, k=LANCZOS_K, h=h or 1e-2, seed=seed,
                                              batch_size=bs)
            bar.update(1)
            bar.set_postfix_str("local Lipschitz")
            li = local_lipschitz(module, xl, eps, norm, seed=seed, batch_size=bs)
            li_train, train_source = None, None
            from ..data import load_train_images

            train = load_train_images(ctx.data.dataset, m, data_dir=ctx.options.data_dir,
                                      npz=ctx.options.train_data)
            if train is not None and m:
                x_train, train_source = train
                if tuple(x_train.shape[1:]) != tuple(xl.shape[1:]):
                    raise HarnessError(f"training images have shape {tuple(x_train.shape[1:])}, "
                                       f"test images {tuple(xl.shape[1:])}")
                li_train = local_lipschitz(module, x_train.to(device=device, dtype=torch.float32) / 255.0,
                                           eps, norm, seed=seed, batch_size=bs)
            bar.update(1)
            bar.set_postfix_str("separation")
            sep, sep_dist, sep_reason = separation_for(ctx)
            bar.update(1)
        finally:
            bar.close()

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
                          "train": li_train["mean"] if li_train else None,
                          "gap": li["mean"] - li_train["mean"] if li_train else None,
                          "train_source": train_source,
                          "note": ("mean over the first points of each split; gap = test - train" if li_train
                                   else "test points only: pass --train-data (or --data-dir) for the train/test gap")},
            "separation": sep,
        }
        if sep is None:
            summary["separation_skipped"] = sep_reason
        arrays = {
            "diagnostics_fgsm_robust": np.asarray(fgsm_rob, dtype=bool),
            "diagnostics_pgd_robust": np.asarray(pgd_rob, dtype=bool),
            "diagnostics_grad_alignment": _padded(ga["per_example"], n),
            "diagnostics_curvature": _padded(cu["per_example"], n),
            "diagnostics_lipschitz": _padded(li["per_example"], n),
            "diagnostics_separation": (sep_dist.astype(np.float32) if sep_dist is not None
                                       else np.full(n, np.nan, np.float32)),
        }
        return StageResult(summary={"diagnostics": _json(summary)}, arrays=arrays)
