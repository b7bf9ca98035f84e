"""AutoAttack robust accuracy, with the official ``pyautoattack`` package, seeded.

How it runs:
- Only points that are classified correctly are attacked (as AutoAttack itself does) and, with
  ``evaluation.certify_first`` (the default), points already certified by an exact bound method are
  skipped too: no attack can succeed there. The record says how many were skipped and estimates the
  attack time that saved.
- The points are cut into fixed blocks of ``batch_size`` consecutive examples (:mod:`harness.stages.blocks`),
  and each block goes through all the attacks as a unit, with AutoAttack seeded with
  ``block_seed(seed, b)``: a block's result does not depend on which rank runs it, and with
  N <= batch_size (one block, seeded with the submission's seed) it is exactly what a plain
  ``AutoAttack(...).run_standard_evaluation`` on those points gives.
- Within a block, the standard version's attacks run one at a time on the points still robust,
  through ``AutoAttack.run_standard_evaluation`` with ``attacks_to_run`` set to that one attack (as
  AutoAttack's own ``run_standard_evaluation_individual`` does). After each attack the block's robust
  flags are written atomically to ``<state>/autoattack/blocks/<b>.progress.*``. An interrupted block
  resumes after its last finished attack, and since every attack sees the same points in the same
  batch with the same seed, the result is the one an uninterrupted run gives. (AutoAttack's own
  ``state_path`` saves in the middle of an attack, non-atomically, without the per-attack
  accuracies; resuming from it changes the batches, and so the random restarts, of the interrupted
  attack.)
- AutoAttack's check messages (randomness, softmax outputs, zero gradients, dynamic forward pass,
  Square beating the white-box attacks, ...) are captured from the ``auto-attack`` logger into the
  record, block by block in block order. ``check_square_sr`` is called once in ``reduce``, on the
  accuracies of all N points after each attack, since each single attack call alone cannot see the
  others.
- A model whose forward pass is random is switched to the ``rand`` version (APGD with EOT). The first
  worker to test the model (on block 0's points) records the version for the whole job
  (``<state>/autoattack/shared/version.json``), so every block uses the same one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time

import numpy as np
import torch

from harness.core.errors import HarnessError
from harness.core.files import atomic_savez, atomic_write_text
from harness.core.stats import accuracy_with_ci
from harness.stages.blocks import Block

from .. import certifiers
from ..diagnostics.aa_messages import AutoAttackCapture
from .base import BlockResult, EvalContext, Stage, StageResult

GALLERY_SIZE = 8


@contextlib.contextmanager
def _captured():
    """AutoAttack's log messages, captured (warnings kept) instead of printed."""
    logger = logging.getLogger("auto-attack")
    old_level, old_prop = logger.level, logger.propagate
    cap = AutoAttackCapture()
    logger.addHandler(cap)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, cap
    finally:
        logger.removeHandler(cap)
        logger.setLevel(old_level)
        logger.propagate = old_prop


def certified_mask(block: Block, n: int) -> np.ndarray:
    """Points of the block certified by a sound certifier (the registry's ``sound_names``; never
    smoothing, which certifies the smoothed classifier), from the certify stage's arrays."""
    mask = np.zeros(n, dtype=bool)
    for m in certifiers.sound_names():
        arr = block.input("certify", f"certified_{m}")
        if arr is not None:
            mask |= arr.astype(bool)
    return mask


class AutoAttackStage(Stage):
    name = "autoattack"
    reads = ("clean", "certify")

    def prepare(self, ctx: EvalContext) -> dict:
        """The AutoAttack version for the whole job: the requested one, or ``rand`` when the forward
        pass is random (tested once, on block 0's points; the first worker's answer holds)."""
        from ..diagnostics.probes import autoattack_version_for

        requested = ctx.spec.evaluation.autoattack_version
        store = ctx.store(self.name)
        decided = store.shared("version")
        if decided is None:
            n = len(ctx.data)
            probe = ctx.data.floats(slice(0, min(n, ctx.batch_size)), ctx.model.device)
            # AutoAttack calls the model on subsets and perturbations of the data: errors name the row
            model = ctx.model.checked(self.name)
            torch.manual_seed(ctx.seed)
            with torch.no_grad():
                version, _ = autoattack_version_for(model, probe, requested=requested)
            decided = store.share("version", {"requested": requested, "version": version})
        if not (isinstance(decided, dict) and decided.get("version") in ("standard", "rand", "plus")
                and decided.get("requested") == requested):
            raise HarnessError(f"{store.shared_path('version')} is malformed; run again with --restart")
        return decided

    def map(self, ctx: EvalContext, block: Block, prep: dict) -> BlockResult:
        from pyautoattack import AutoAttack, checks

        k = len(block)
        y_b = ctx.data.y[block.slice].numpy()
        correct = block.input("clean", "clean_correct")
        if correct is None:
            correct = ctx.model.predict(ctx.data.floats(block.slice), ctx.batch_size, stage=self.name,
                                        index=ctx.data.index[block.slice]).numpy() == y_b
        correct = correct.astype(bool)
        certified = certified_mask(block, k) & correct if ctx.spec.evaluation.certify_first else np.zeros(k, bool)
        attacked = correct & ~certified

        version = prep["version"]
        model = ctx.model.checked(self.name)
        device = ctx.model.device
        aa = AutoAttack(model, device=device, eps=ctx.eps, norm=ctx.norm, seed=block.seed, version=version)
        attacks = list(aa.attacks_to_run)

        store = ctx.store(self.name)
        meta_path, arr_path = store.block_path(block.index, ".progress.json"), store.block_path(block.index,
                                                                                                ".progress.npz")
        c, h, w = ctx.data.input_shape
        if meta_path.exists() and arr_path.exists():
            meta = json.loads(meta_path.read_text())
            with np.load(arr_path, allow_pickle=False) as z:
                robust, broken_by = z["robust"].copy(), z["broken_by"].copy()
                g_idx, g_adv, g_pred, g_att = (z["g_idx"].tolist(), list(z["g_adv"]), z["g_pred"].tolist(),
                                               z["g_attack"].tolist())
            if meta.get("attacks") != attacks or robust.shape != (k,):
                raise HarnessError(f"{meta_path} does not belong to this run; run again with --restart")
        else:
            meta = {"attacks": attacks, "done": [], "seconds": {}, "n_input": {}, "checks": [], "fraction": 0.0}
            robust = correct.copy()  # certified points count as robust: no attack can break them
            broken_by = np.full(k, -1, dtype=np.int8)
            g_idx, g_adv, g_pred, g_att = [], [], [], []

        # pyautoattack's check_dynamic counts calls in a module-level dict that it never resets:
        # after one dynamic model, every later run in the process would be reported as dynamic.
        for key in checks.funcs:
            checks.funcs[key] = 0

        with _captured() as (_, cap):
            for a_i, attack in enumerate(attacks):
                if attack in meta["done"]:
                    continue
                todo = np.nonzero(robust & attacked)[0]
                t0 = time.perf_counter()
                if todo.size:
                    aa.attacks_to_run = [attack]
                    x = ctx.data.floats(block.start + todo, device)
                    y = ctx.data.labels(block.start + todo, device)
                    x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=ctx.batch_size)
                    broke = (y_adv != y).cpu().numpy()
                    robust[todo[broke]] = False
                    broken_by[todo[broke]] = a_i
                    for j in np.nonzero(broke)[0]:
                        if len(g_idx) < GALLERY_SIZE:
                            g_idx.append(int(block.start + todo[j]))
                            g_adv.append((x_adv[j].detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy())
                            g_pred.append(int(y_adv[j]))
                            g_att.append(a_i)
                meta["seconds"][attack] = time.perf_counter() - t0
                meta["n_input"][attack] = int(todo.size)
                meta["done"].append(attack)
                meta["fraction"] = len(meta["done"]) / len(attacks)
                meta["checks"] = _merge(meta["checks"], cap.warnings)
                atomic_savez(arr_path, {
                    "robust": robust, "broken_by": broken_by, "g_idx": np.array(g_idx, dtype=np.int64),
                    "g_adv": np.array(g_adv, dtype=np.uint8).reshape(-1, c, h, w),
                    "g_pred": np.array(g_pred, dtype=np.int64), "g_attack": np.array(g_att, dtype=np.int64),
                })
                atomic_write_text(meta_path, json.dumps(meta, indent=1))
        return BlockResult(
            arrays={
                "autoattack_robust": robust, "autoattack_attacked": attacked, "autoattack_broken_by": broken_by,
                "gallery_index": np.array(g_idx, dtype=np.int64),
                "gallery_adv": np.array(g_adv, dtype=np.uint8).reshape(-1, c, h, w),
                "gallery_adv_pred": np.array(g_pred, dtype=np.int64),
                "gallery_attack": np.array(g_att, dtype=np.int64),
            },
            extras={"version": version, "requested": prep["requested"], "attacks": attacks,
                    "seconds": meta["seconds"], "n_input": meta["n_input"],
                    "checks": _merge(meta["checks"], cap.warnings)},
        )

    def reduce(self, ctx: EvalContext, arrays, extras) -> StageResult:
        from pyautoattack import checks

        robust = arrays["autoattack_robust"].astype(bool)
        attacked = arrays["autoattack_attacked"].astype(bool)
        broken_by = arrays["autoattack_broken_by"].astype(np.int8)
        n = robust.size
        # robust and attacked points were classified correctly; the others were skipped as misclassified
        correct = robust | attacked
        certified = correct & ~attacked
        plans = {(e["version"], e["requested"], tuple(e["attacks"])) for e in extras}
        if len(plans) != 1:
            raise HarnessError(f"the blocks of stage autoattack in {ctx.state_dir} ran different attacks; "
                               "run again with --restart")
        version, requested, attacks = plans.pop()
        attacks = list(attacks)
        accuracy_after = {"clean": float(correct.mean()) if n else 0.0}
        for a_i, attack in enumerate(attacks):
            still = correct & ~((broken_by >= 0) & (broken_by <= a_i))
            accuracy_after[attack] = float(still.mean()) if n else 0.0
        seconds = {a: sum(float(e["seconds"].get(a, 0.0)) for e in extras) for a in attacks}
        n_input = {a: sum(int(e["n_input"].get(a, 0)) for e in extras) for a in attacks}
        check_msgs: list[str] = []
        for e in extras:
            check_msgs = _merge(check_msgs, [str(m) for m in e["checks"]])
        if len(attacks) > 1:
            with _captured() as (logger, cap):
                checks.check_square_sr(dict(accuracy_after), logger=logger)
            check_msgs = _merge(check_msgs, cap.warnings)
        if version != requested:
            check_msgs.insert(0, "harness: the forward pass is random; switched from the standard to the rand version "
                              "(EOT)")

        # A certified point would survive every attack: it would have cost one pass through each.
        per_point = sum(seconds[a] / n_input[a] for a in attacks if n_input.get(a))
        saved = per_point * int(certified.sum()) if any(n_input.values()) else None

        acc, ci = accuracy_with_ci(robust)
        # the gallery: the first GALLERY_SIZE broken points by (attack, index), shown by index
        g_idx, g_att = arrays["gallery_index"].astype(np.int64), arrays["gallery_attack"].astype(np.int64)
        first = np.lexsort((g_idx, g_att))[:GALLERY_SIZE]
        keep = first[np.argsort(g_idx[first])]
        shape = ctx.data.input_shape
        arrays_out = {
            "autoattack_robust": robust,
            "autoattack_attacked": attacked,
            "autoattack_broken_by": broken_by,
            "gallery_index": g_idx[keep],
            "gallery_clean": ctx.data.uint8(g_idx[keep]).numpy() if keep.size else np.zeros((0, *shape), np.uint8),
            "gallery_adv": arrays["gallery_adv"].astype(np.uint8)[keep].reshape(-1, *shape),
            "gallery_adv_pred": arrays["gallery_adv_pred"].astype(np.int64)[keep],
        }
        return StageResult(
            summary={
                "robust_accuracy": acc,
                "robust_accuracy_ci95": list(ci),
                "autoattack": {
                    "version": version,
                    "seed": ctx.seed,
                    "attacks": attacks,
                    "accuracy_after": accuracy_after,
                    "checks": check_msgs,
                    "n_attacked": int(attacked.sum()),
                    "n_skipped_misclassified": int((~correct).sum()),
                    "n_skipped_certified": int(certified.sum()),
                    "seconds_per_attack": seconds,
                    "seconds_saved_by_certify_first": saved,
                    "batch_size": ctx.batch_size,
                },
            },
            arrays=arrays_out,
        )


def _merge(a: list[str], b: list[str]) -> list[str]:
    out = list(a)
    for m in b:
        if m not in out:
            out.append(m)
    return out
