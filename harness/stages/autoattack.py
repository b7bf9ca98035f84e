"""AutoAttack robust accuracy, with the official ``pyautoattack`` package, seeded.

How it runs:
- Only points that are classified correctly are attacked (as AutoAttack itself does) and, with
  ``evaluation.certify_first`` (the default), points already certified by an exact bound method are
  skipped too: no attack can succeed there. The record says how many were skipped and estimates the
  attack time that saved.
- The standard version's attacks run one at a time on the points still robust, through
  ``AutoAttack.run_standard_evaluation`` with ``attacks_to_run`` set to that one attack (as
  AutoAttack's own ``run_standard_evaluation_individual`` does). After each attack the robust flags
  are written atomically to the run's state. An interrupted run resumes after the last finished
  attack, and since every attack sees the same points in the same batches with the same seed, the
  result is the one an uninterrupted run gives. (AutoAttack's own ``state_path`` saves in the middle
  of an attack, non-atomically, without the per-attack accuracies; resuming from it changes the
  batches, and so the random restarts, of the interrupted attack.)
- AutoAttack's check messages (randomness, softmax outputs, zero gradients, dynamic forward pass,
  Square beating the white-box attacks, ...) are captured from the ``auto-attack`` logger into the
  record. ``check_square_sr`` is called once on the accuracies after all attacks, since each single
  attack call alone cannot see the others.
- A model whose forward pass is random is switched to the ``rand`` version (APGD with EOT).
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np
import torch

from ..bounds import METHODS as EXACT_CERTIFIERS  # bound methods: sound, not probabilistic
from ..diagnostics.aa_messages import AutoAttackCapture
from ..files import atomic_savez, atomic_write_text
from ..stats import accuracy_with_ci
from .base import EvalContext, StageResult

GALLERY_SIZE = 8


def certified_mask(ctx: EvalContext) -> np.ndarray:
    n = len(ctx.data)
    mask = np.zeros(n, dtype=bool)
    for m in EXACT_CERTIFIERS:
        arr = ctx.array("certify", f"certified_{m}")
        if arr is not None:
            mask |= arr.astype(bool)
    return mask


class AutoAttackStage:
    name = "autoattack"
    reads: tuple[str, ...] = ("clean", "certify")

    def run(self, ctx: EvalContext) -> StageResult:
        from pyautoattack import AutoAttack, checks

        n = len(ctx.data)
        y_all = ctx.data.y.numpy()
        correct = ctx.array("clean", "clean_correct")
        if correct is None:
            correct = ctx.model.predict(ctx.data.floats(), ctx.batch_size, stage=self.name,
                                        index=ctx.data.index).numpy() == y_all
        correct = correct.astype(bool)
        certified = certified_mask(ctx) & correct if ctx.spec.evaluation.certify_first else np.zeros(n, bool)
        attacked = correct & ~certified

        from ..diagnostics.probes import autoattack_version_for

        requested = ctx.spec.evaluation.autoattack_version
        probe = ctx.data.floats(slice(0, min(n, ctx.batch_size)), ctx.model.device)
        # AutoAttack calls the model on subsets and perturbations of the data: errors name the row
        model = ctx.model.checked(self.name)
        with torch.no_grad():
            version, _ = autoattack_version_for(model, probe, requested=requested)
        switched = version != requested

        device = ctx.model.device
        aa = AutoAttack(model, device=device, eps=ctx.eps, norm=ctx.norm, seed=ctx.seed, version=version)
        attacks = list(aa.attacks_to_run)

        sdir = ctx.stage_dir(self.name)
        meta_path, arr_path = sdir / "progress.json", sdir / "progress.npz"
        if meta_path.exists() and arr_path.exists():
            meta = json.loads(meta_path.read_text())
            with np.load(arr_path, allow_pickle=False) as z:
                robust, broken_by = z["robust"].copy(), z["broken_by"].copy()
                g_idx, g_adv, g_pred = z["g_idx"].tolist(), list(z["g_adv"]), z["g_pred"].tolist()
        else:
            meta = {"done": [], "accuracy_after": {"clean": float(correct.mean()) if n else 0.0},
                    "seconds": {}, "n_input": {}, "checks": [], "resumed_after": None}
            robust = correct.copy()  # certified points count as robust: no attack can break them
            broken_by = np.full(n, -1, dtype=np.int8)
            g_idx, g_adv, g_pred = [], [], []
        if meta["done"]:
            meta["resumed_after"] = meta["done"][-1]

        # pyautoattack's check_dynamic counts calls in a module-level dict that it never resets:
        # after one dynamic model, every later run in the process would be reported as dynamic.
        for key in checks.funcs:
            checks.funcs[key] = 0

        logger = logging.getLogger("auto-attack")
        old_level, old_prop = logger.level, logger.propagate
        bar = ctx.progress(total=len(attacks), desc=f"autoattack ({version})", unit="attack")
        bar.update(len(meta["done"]))
        cap = AutoAttackCapture(bar)
        logger.addHandler(cap)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        try:
            for a_i, attack in enumerate(attacks):
                if attack in meta["done"]:
                    continue
                todo = np.nonzero(robust & attacked)[0]
                t0 = time.perf_counter()
                if todo.size:
                    aa.attacks_to_run = [attack]
                    x = ctx.data.floats(todo, device)
                    y = ctx.data.labels(todo, device)
                    x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=ctx.batch_size)
                    broke = (y_adv != y).cpu().numpy()
                    robust[todo[broke]] = False
                    broken_by[todo[broke]] = a_i
                    for j in np.nonzero(broke)[0]:
                        if len(g_idx) < GALLERY_SIZE:
                            g_idx.append(int(todo[j]))
                            g_adv.append((x_adv[j].detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy())
                            g_pred.append(int(y_adv[j]))
                meta["seconds"][attack] = time.perf_counter() - t0
                meta["n_input"][attack] = int(todo.size)
                meta["accuracy_after"][attack] = float(robust.mean()) if n else 0.0
                meta["done"].append(attack)
                meta["checks"] = _merge(meta["checks"], cap.warnings)
                c, h, w = ctx.data.input_shape
                atomic_savez(arr_path, {
                    "robust": robust, "broken_by": broken_by, "g_idx": np.array(g_idx, dtype=np.int64),
                    "g_adv": np.array(g_adv, dtype=np.uint8).reshape(-1, c, h, w),
                    "g_pred": np.array(g_pred, dtype=np.int64),
                })
                atomic_write_text(meta_path, json.dumps(meta, indent=1))
                bar.update(1)
                bar.set_postfix_str(f"robust {meta['accuracy_after'][attack]:.2%} after {attack}")
            if len(attacks) > 1:
                checks.check_square_sr(dict(meta["accuracy_after"]), logger=logger)
        finally:
            bar.close()
            logger.removeHandler(cap)
            logger.setLevel(old_level)
            logger.propagate = old_prop
        check_msgs = _merge(meta["checks"], cap.warnings)
        if switched:
            check_msgs.insert(0, "harness: the forward pass is random; switched from the standard to the rand version (EOT)")

        # A certified point would survive every attack: it would have cost one pass through each.
        per_point = sum(meta["seconds"][a] / meta["n_input"][a] for a in attacks if meta["n_input"].get(a))
        saved = per_point * int(certified.sum()) if any(meta["n_input"].values()) else None

        acc, ci = accuracy_with_ci(robust)
        order = np.argsort(g_idx) if g_idx else np.array([], dtype=int)
        g_idx_arr = np.array(g_idx, dtype=np.int64)[order] if g_idx else np.zeros(0, np.int64)
        arrays = {
            "autoattack_robust": robust,
            "autoattack_attacked": attacked,
            "autoattack_broken_by": broken_by,
            "gallery_index": g_idx_arr,
            "gallery_clean": ctx.data.x[g_idx_arr].numpy() if g_idx else np.zeros((0, *ctx.data.input_shape), np.uint8),
            "gallery_adv": np.array(g_adv, dtype=np.uint8)[order] if g_idx else np.zeros((0, *ctx.data.input_shape), np.uint8),
            "gallery_adv_pred": np.array(g_pred, dtype=np.int64)[order] if g_idx else np.zeros(0, np.int64),
        }
        return StageResult(
            summary={
                "robust_accuracy": acc,
                "robust_accuracy_ci95": list(ci),
                "autoattack": {
                    "version": version,
                    "seed": ctx.seed,
                    "attacks": attacks,
                    "accuracy_after": meta["accuracy_after"],
                    "checks": check_msgs,
                    "n_attacked": int(attacked.sum()),
                    "n_skipped_misclassified": int((~correct).sum()),
                    "n_skipped_certified": int(certified.sum()),
                    "seconds_per_attack": meta["seconds"],
                    "seconds_saved_by_certify_first": saved,
                    "batch_size": ctx.batch_size,
                },
            },
            arrays=arrays,
        )


def _merge(a: list[str], b: list[str]) -> list[str]:
    out = list(a)
    for m in b:
        if m not in out:
            out.append(m)
    return out
