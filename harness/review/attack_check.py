"""``harness attack-check submissions/<id>/attacks/<name>/attack.yaml``: check an external attack
against a re-evaluated entry, example by example, and write the checked attack record.

An external attack (:mod:`harness.record.attack`: ``attack.yaml`` + ``adversarial.npz``) claims
that the submitted images are adversarial examples of the entry's model. Nothing of it is believed:

1. ``attack.yaml`` is validated (pydantic, extra fields forbidden, a licence), ``adversarial.npz``
   read with :func:`harness.npzsafe.read_npz` (no pickle; headers and sizes checked first; only the
   arrays ``index`` and ``images``, float32 or float64, of the dataset's image shape).
2. The entry's result record ``leaderboard/results/<id>.json`` (``--record``) is read with all its
   invariants and tied to the submission as it is now (:func:`harness.record.check_against_submission`:
   hashes of the result-relevant fields and of every file), so the model checked is the model evaluated.
3. Per example, here in the supervisor (the model never sees a refused example):

   - the index is one of the record's evaluated points (its ``index`` array), and appears once;
   - the model classified the clean image correctly (``clean_correct``): an attack can only lower
     accuracy on points that count as correct;
   - every pixel is finite and within [-box_atol, 1 + box_atol]; the image is then cast to float32 and
     clipped to [0, 1], and that is the image measured and classified;
   - its distance to the original image (the dataset's, the record's labels checked against it), in
     float64 in the threat model's norm, is at most eps + norm_atol
     (:data:`harness.record.attack.NORM_ATOL`, :data:`~harness.record.attack.BOX_ATOL`).

4. The images are classified by the entry's model in the sandboxed evaluation worker (job kind
   ``attack``: the same loading path as ``harness eval``, no network, the maintainer's limits); the
   predictions come back through a file read as untrusted data. An example counts as broken only if
   the model gets it wrong (in every one of ``forward_passes`` passes when the record's AutoAttack ran
   the ``rand`` version, i.e. the forward pass is random).

Any refused example (out of the ball, out of [0, 1], an index outside the evaluated set, a repeated
index, a point the model got wrong already, an image the model classifies correctly: a forged or
failed example) is one error line naming it, with how many more share the problem, and nothing is
written: the entry's record and any earlier attack record stay as they were. When every example
passes, the attack record is written (atomically) to ``--out`` or the scratch path
``leaderboard/results/local/attacks/<id>/<name>.json``; ``harness sign`` signs it like a record.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import HarnessError, one_line
from harness.core.files import sha256_file
from harness.record.attack import (
    ADVERSARIAL_NPZ,
    ATTACK_SCHEMA_VERSION,
    BOX_ATOL,
    KIND,
    NORM_ATOL,
    AttackRecord,
    default_out,
    locate,
    read_attack_spec,
)

#: forward passes per image when the record's AutoAttack ran the ``rand`` version (a random forward
#: pass): the image counts as broken only if every pass misclassifies it
RANDOM_PASSES = 10
#: the adversarial file may hold at most this many bytes per pixel of the record's N images (float64),
#: plus a header allowance
_NPZ_SLACK = 1 << 20


@dataclass
class AttackInputs:
    """What the supervisor checked and hands to the worker: record positions and float32 images."""
    positions: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    dist: np.ndarray


@dataclass
class AttackCheckResult:
    record: AttackRecord
    out: Path
    autoattack_accuracy: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        r = self.record
        return (f"{r.entry_id} / {r.attack_name}: {r.n_submitted} submitted example(s), all checked and misclassified; "
                f"{len(r.missed_by_autoattack)} of them AutoAttack had missed; best-known accuracy "
                f"{100 * r.best_known_accuracy:.2f}% (AutoAttack {100 * self.autoattack_accuracy:.2f}%, N = "
                f"{r.n_examples})")


def _few(items: list[str], more: int) -> str:
    return ", ".join(items) + (f" (and {more} more)" if more > 0 else "")


def _refuse(where: str, what: str, bad: np.ndarray, describe) -> None:
    """One line for the examples of ``bad`` (positions in the submitted arrays), if any."""
    idx = np.nonzero(bad)[0]
    if idx.size:
        first = [describe(int(j)) for j in idx[:3]]
        raise HarnessError(f"{where}: {what}: {_few(first, int(idx.size) - len(first))}; nothing was written")


def read_adversarial(path: Path, *, n_examples: int, image_shape: tuple[int, ...] | None) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """``index`` and ``images`` of an ``adversarial.npz`` (shapes and dtypes checked from the headers)."""
    from harness.data.npzsafe import read_npz

    pixels = math.prod(image_shape) if image_shape else 3 * 512 * 512
    cap = 8 * n_examples * pixels + n_examples * 8 + _NPZ_SLACK

    def check(name: str, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        if name == "index":
            if len(shape) != 1 or dtype.kind not in "iu":
                return f"must be a 1-d array of integers, got shape {shape[:8]} dtype {dtype}"
            if not 1 <= shape[0] <= n_examples:
                return f"holds {shape[0]} examples; an attack holds 1 to the record's N = {n_examples}"
        elif name == "images":
            if dtype not in (np.float32, np.float64):
                return f"has dtype {dtype}; images are float32 or float64 pixels in [0, 1]"
            if len(shape) != 4 or (image_shape is not None and tuple(shape[1:]) != tuple(image_shape)):
                want = f"(k, {', '.join(map(str, image_shape))})" if image_shape else "(k, C, H, W)"
                return f"has shape {shape[:8]}; expected {want}"
        else:
            return "unknown array; adversarial.npz holds only 'index' and 'images'"
        return None

    arrays = read_npz(path, max_file_bytes=cap, max_total_bytes=cap, max_arrays=2, check=check, what=ADVERSARIAL_NPZ)
    for name in ("index", "images"):
        if name not in arrays:
            raise HarnessError(f"{path}: {ADVERSARIAL_NPZ}: has no array {name!r}")
    index, images = arrays["index"], arrays["images"]
    if images.shape[0] != index.shape[0]:
        raise HarnessError(f"{path}: {ADVERSARIAL_NPZ}: {index.shape[0]} indices but {images.shape[0]} images")
    return index.astype(np.int64), images


def check_examples(where: str, index: np.ndarray, images: np.ndarray, *, record_index: np.ndarray,
                   clean_correct: np.ndarray) -> np.ndarray:
    """The checks that need no data and no model; returns the record positions of the examples."""
    pos_of = {int(v): p for p, v in enumerate(record_index.tolist())}
    shown = lambda j: f"example {j} (index {int(index[j])})"  # noqa: E731
    _refuse(where, "index not in the record's evaluated set (its first "
            f"{record_index.size} points)", np.array([int(v) not in pos_of for v in index.tolist()]), shown)
    _, first, counts = np.unique(index, return_index=True, return_counts=True)
    dup = np.ones(index.size, dtype=bool)
    dup[first] = False
    _refuse(where, "index submitted more than once (one image per point)", dup, shown)
    pos = np.array([pos_of[int(v)] for v in index.tolist()], dtype=np.int64)
    flat = images.reshape(images.shape[0], -1)
    finite = np.isfinite(flat).all(axis=1)
    _refuse(where, "pixels not finite (NaN or infinity)", ~finite, shown)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    _refuse(where, f"pixels outside [0, 1] (tolerance {BOX_ATOL:g})", (lo < -BOX_ATOL) | (hi > 1 + BOX_ATOL),
            lambda j: f"{shown(j)} spans [{float(lo[j]):.6g}, {float(hi[j]):.6g}]")
    _refuse(where, "the model already misclassifies the clean image (the record's clean_correct is false), so "
            "an attack cannot lower its accuracy there", ~clean_correct[pos].astype(bool), shown)
    return pos


def distances(adv: np.ndarray, orig: np.ndarray, norm: str) -> np.ndarray:
    """Per-example distance in float64 (Linf: largest absolute pixel difference; L2: Euclidean)."""
    d = adv.astype(np.float64).reshape(adv.shape[0], -1) - orig.astype(np.float64).reshape(orig.shape[0], -1)
    return np.abs(d).max(axis=1) if norm == "Linf" else np.sqrt((d * d).sum(axis=1))


def check_ball(where: str, index: np.ndarray, adv: np.ndarray, orig: np.ndarray, *, norm: str,
               eps: float) -> np.ndarray:
    dist = distances(adv, orig, norm)
    _refuse(where, f"outside the {norm} ball of radius eps = {eps:g} (tolerance {NORM_ATOL:g})",
            dist > eps + NORM_ATOL, lambda j: f"example {j} (index {int(index[j])}) at distance {float(dist[j]):.6g}")
    return dist


# ------------------------------------------------------------------------------------------ worker
def worker_attack(ctx) -> None:
    """Job kind ``attack`` in the sandboxed worker (:data:`harness.sandbox.job.JOB_KINDS`): attack-check's
    model work, the checked images classified, into ``<state>/attack_result.npz``."""
    run_attack_job(ctx.job)


def run_attack_job(job) -> None:
    """In the worker (job kind ``attack``): load the model as an evaluation does, classify the checked
    images ``forward_passes`` times, save ``<state>/attack_result.npz`` (``pred``: (passes, k))."""
    import torch

    from harness.core.files import atomic_savez
    from harness.data.npzsafe import read_npz
    from harness.models.load import load_model
    from harness.submission.load import load_submission

    a = job.attack or {}
    sub = load_submission(job.submission)
    shape = tuple(int(d) for d in a["input_shape"])
    num_classes, passes = int(a["num_classes"]), int(a["forward_passes"])
    inputs = read_npz(Path(job.state_dir) / "attack_inputs.npz", max_file_bytes=1 << 40, max_total_bytes=1 << 40,
                      names=("images", "index"), what="the attack job's inputs")
    x_all, index = torch.from_numpy(np.ascontiguousarray(inputs["images"])), inputs["index"]
    device = torch.device(job.device)
    torch.manual_seed(int(a.get("seed", 0)))
    model = load_model(sub, input_shape=shape, num_classes=num_classes, device=device, trust_code=job.trust_code,
                       max_model_bytes=job.max_model_bytes)
    preds = np.zeros((passes, x_all.shape[0]), dtype=np.int64)
    for p in range(passes):
        preds[p] = model.predict(x_all, job.batch_size, stage="attack-check", index=index).numpy()
    atomic_savez(Path(job.state_dir) / "attack_result.npz", {"pred": preds})


def classify_sandboxed(sub, inputs: AttackInputs, *, input_shape: tuple[int, ...], num_classes: int,
                       forward_passes: int, seed: int, device: str, batch_size: int, sandbox: str,
                       data_dir: Path | None = None) -> tuple[np.ndarray, dict]:
    """The predictions of the entry's model on the checked images, (passes, k), from the sandboxed
    worker (``sandbox`` "worker" or "bwrap"; "none" runs the model in this process: trusted test
    fixtures only), and the runtime description."""
    from harness.core.files import atomic_savez
    from harness.data.npzsafe import read_npz
    from harness.runner.evaluate import resolve_limits
    from harness.sandbox.job import WorkerJob
    from harness.sandbox.supervisor import run_worker
    from harness.stages import EvalOptions

    k = inputs.positions.size
    work = Path(tempfile.mkdtemp(prefix="harness-attack-check-"))
    try:
        atomic_savez(work / "attack_inputs.npz", {"images": inputs.images, "index": inputs.positions})
        os.chmod(work, 0o755)  # the worker may run as an unprivileged user; it reads the inputs
        os.chmod(work / "attack_inputs.npz", 0o644)
        limits = resolve_limits(sub, EvalOptions())
        spec = {"input_shape": list(input_shape), "num_classes": int(num_classes),
                "forward_passes": int(forward_passes), "seed": int(seed)}
        job = WorkerJob(
            submission=str(sub.yaml_path), submission_sha256=sub.yaml_sha256, state_dir=str(work), stages=[],
            device=device, n_examples=0, batch_size=int(batch_size), progress=False,
            memory_limit=limits["memory"], cpu_limit=limits["cpu"], isolate_network=sandbox != "bwrap",
            parent_pid=None if sandbox == "bwrap" else os.getpid(), max_model_bytes=limits["memory"],
            kind="attack", attack=spec)
        runtime: dict = {"sandbox": {"mode": sandbox}}
        if sandbox == "none":
            run_attack_job(job)
        else:
            got = run_worker(job, mode=sandbox, stage_timeout=limits["stage_timeout"],
                             watch_memory=limits["memory"] if device.startswith("cuda") else None,
                             read_only=[sub.folder, sub.checkpoint_path().parent], echo=lambda line: None)
            runtime = {"device_name": got.get("device_name"), "sandbox": got.get("sandbox")}
        out = read_npz(work / "attack_result.npz", max_file_bytes=64 * forward_passes * k + _NPZ_SLACK,
                       max_total_bytes=64 * forward_passes * k + _NPZ_SLACK, names=("pred",),
                       what="the attack job's result")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pred = out.get("pred")
    if pred is None or pred.shape != (forward_passes, k) or pred.dtype.kind not in "iu" \
            or (k and (pred.min() < 0 or pred.max() >= num_classes)):
        raise HarnessError("the attack job's result is malformed (unexpected shape or classes)")
    return pred.astype(np.int64), runtime


# ------------------------------------------------------------------------------------------- check
def _resolve_device(device: str) -> str:
    from harness.models.load import resolve_device

    return str(resolve_device(device))


def attack_check(yaml_path: str | Path, *, out: str | Path | None = None, record: str | Path | None = None,
                 device: str = "cpu", data_dir: str | Path | None = None, sandbox: str = "worker",
                 batch_size: int | None = None, command: str = "", write: bool = True) -> AttackCheckResult:
    """Check the external attack of ``yaml_path`` (see the module docstring) and write its attack
    record (unless ``write`` is False); every refusal is a one-line HarnessError, with nothing written."""
    from harness import __version__
    from harness.core.provenance import now, package_versions
    from harness.data import registry as datasets
    from harness.data.loaders import load_test_data, num_classes_of
    from harness.record.checks import check_against_submission
    from harness.record.read import read_record
    from harness.record.signing import load_trusted_keys, verify_record
    from harness.review.audit import load_examples
    from harness.submission.load import parse_submission

    t0 = time.perf_counter()
    started = now()
    yaml_path = Path(yaml_path)
    root, entry_id, name = locate(yaml_path)
    where = f"{entry_id}/attacks/{name}"
    spec = read_attack_spec(yaml_path)
    npz_path = yaml_path.parent / ADVERSARIAL_NPZ
    if not npz_path.is_file() or npz_path.is_symlink():
        raise HarnessError(f"{one_line(npz_path, 300)}: missing (an attack is attack.yaml and adversarial.npz)")
    out_path = Path(out) if out is not None else default_out(root, entry_id, name)
    if os.path.lexists(out_path) and not out_path.is_file():
        raise HarnessError(f"--out {one_line(out_path, 300)}: not a regular file")

    record_path = Path(record) if record is not None else root / "leaderboard" / "results" / f"{entry_id}.json"
    if not record_path.is_file():
        raise HarnessError(f"{one_line(record_path, 300)}: no result record for entry {entry_id!r}: an attack is "
                           "checked against a re-evaluated entry")
    rec = read_record(record_path)
    if rec.submission_id != entry_id:
        raise HarnessError(f"{record_path}: the record is for {rec.submission_id!r}, the attack for {entry_id!r}")
    if rec.robust_accuracy is None or rec.clean_accuracy is None:
        raise HarnessError(f"{record_path}: the record has no clean and AutoAttack result to improve on")
    sub_yaml = root / "submissions" / entry_id / "submission.yaml"
    sub, problems = parse_submission(sub_yaml)
    if sub is None or problems:
        raise HarnessError(f"{sub_yaml}: {problems[0] if problems else 'invalid'} (run `harness validate {sub_yaml}`)")
    check_against_submission(rec, record_path, sub)
    arrays = load_examples(rec, record_path)
    examples_sha = sha256_file(record_path.with_name(rec.examples_file or ""))
    try:
        keys = load_trusted_keys(root / "leaderboard" / "keys")
        signed_by = verify_record(record_path, keys).key_name
    except HarnessError:
        signed_by = None

    d = datasets.find(rec.dataset)
    image_shape = d.shape_for(sub.spec.resize_crop) if d is not None else None
    index, images = read_adversarial(npz_path, n_examples=rec.n_examples, image_shape=image_shape)
    pos = check_examples(where, index, images, record_index=arrays["index"], clean_correct=arrays["clean_correct"])

    need = int(pos.max()) + 1
    try:
        data = load_test_data(rec.dataset, need, data_dir=data_dir, custom_path=sub.dataset_path(),
                              preprocessing=sub.spec.resize_crop)
    except HarnessError as e:
        raise HarnessError(f"{where}: the original images are needed to check the eps-ball: {e}")
    labels = data.y.numpy()[pos]
    if not np.array_equal(labels, arrays["label"][pos].astype(np.int64)):
        bad = [int(index[j]) for j in np.nonzero(labels != arrays["label"][pos])[0][:3]]
        raise HarnessError(f"{where}: the record's labels differ from the dataset's at indices {bad}; "
                           "the record was made on other data")
    adv = np.clip(images.astype(np.float32), 0.0, 1.0)  # exactly what the model will see
    orig = data.floats(pos).numpy()
    dist = check_ball(where, index, adv, orig, norm=rec.threat_model.norm, eps=float(rec.threat_model.eps))

    inputs = AttackInputs(pos, adv, labels, dist)
    passes = RANDOM_PASSES if rec.autoattack is not None and rec.autoattack.version == "rand" else 1
    dev = _resolve_device(device)
    bs = int(batch_size or min(sub.spec.evaluation.batch_size, 256))
    pred, runtime = classify_sandboxed(sub, inputs, input_shape=tuple(adv.shape[1:]), num_classes=num_classes_of(data),
                                       forward_passes=passes, seed=int(rec.provenance.seed), device=dev,
                                       batch_size=bs, sandbox=sandbox, data_dir=Path(data_dir) if data_dir else None)
    wrong = (pred != labels[None, :]).all(axis=0)
    _refuse(where, "the model classifies the submitted image correctly (not an adversarial example"
            + (f" in all {passes} passes of its random forward pass" if passes > 1 else "") + ")", ~wrong,
            lambda j: f"example {j} (index {int(index[j])}) as its label {int(labels[j])}")

    broken = sorted(int(arrays["index"][p]) for p in pos)
    robust = arrays["autoattack_robust"].astype(bool)
    missed = sorted(int(arrays["index"][p]) for p in pos if robust[p])
    n = rec.n_examples
    still = robust.copy()
    still[pos] = False
    best = float(still.sum()) / n
    raw = {
        "schema_version": ATTACK_SCHEMA_VERSION, "kind": KIND, "entry_id": entry_id, "attack_name": name,
        "record_results_sha256": rec.provenance.results_sha256, "record_examples_sha256": examples_sha,
        "dataset": rec.dataset, "threat_model": {"norm": rec.threat_model.norm, "eps": float(rec.threat_model.eps)},
        "n_examples": n, "tolerance": {"norm_atol": NORM_ATOL, "box_atol": BOX_ATOL},
        "n_submitted": int(index.size), "broken_index": broken, "missed_by_autoattack": missed,
        "best_known_accuracy": best,
        "metadata": {"authors": list(spec.authors), "method": spec.method, "url": spec.url, "licence": spec.licence},
        "provenance": {
            "harness_version": __version__, "packages": package_versions(), "device": dev,
            "device_name": runtime.get("device_name"), "seed": int(rec.provenance.seed), "started_at": started,
            "finished_at": now(), "seconds": round(time.perf_counter() - t0, 3),
            "attack_yaml_sha256": sha256_file(yaml_path), "adversarial_npz_sha256": sha256_file(npz_path),
            "command": command or f"harness attack-check {yaml_path}", "forward_passes": passes,
            "sandbox": runtime.get("sandbox"), "record_signed_by": signed_by,
        },
        "signature": None,
    }
    attack_record = AttackRecord.model_validate(raw)
    notes = [] if signed_by else [f"the result record {record_path.name} is not signed by a key of leaderboard/keys/: "
                                  "this check counts only on a local board"]
    if write:
        from harness.core.files import atomic_write_text

        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_path, json.dumps(_dump(attack_record), indent=2) + "\n")
    return AttackCheckResult(attack_record, out_path, float(rec.robust_accuracy), notes)


def _dump(r: AttackRecord) -> dict[str, Any]:
    return r.model_dump(mode="json")
