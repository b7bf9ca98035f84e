"""AutoAttack through the pipeline: bounded by clean accuracy, breaks the standard model, not the
PGD-trained one, is at least as strong as plain PGD-20 example by example, and resumes exactly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.runner.evaluate import evaluate
from harness.stages import EvalOptions

N = 100


def _eval(repo, sub_id, out, n=N, stages=("clean", "autoattack"), batch_size=100):
    return evaluate(repo / "submissions" / sub_id / "submission.yaml",
                    EvalOptions(device="cpu", n_examples=n, batch_size=batch_size, progress=False),
                    stages=list(stages), out=out, echo=lambda s: None)


@pytest.fixture(scope="module")
def pgd_run(repo, tmp_path_factory):
    return _eval(repo, "mnist-pgd", tmp_path_factory.mktemp("pgd") / "rec.json")


@pytest.fixture(scope="module")
def std_run(repo, tmp_path_factory):
    return _eval(repo, "mnist-standard", tmp_path_factory.mktemp("std") / "rec.json")


@pytest.mark.slow
def test_robust_accuracy_at_most_clean(std_run, pgd_run):
    for run in (std_run, pgd_run):
        rec, arr = run.record, run.arrays
        assert rec.robust_accuracy <= rec.clean_accuracy
        assert not (arr["autoattack_robust"] & ~arr["clean_correct"]).any()
        after = list(rec.autoattack.accuracy_after.values())
        assert after == sorted(after, reverse=True), "accuracy must not rise from one attack to the next"
        assert after[-1] == rec.robust_accuracy
        assert rec.autoattack.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
        assert rec.autoattack.seed == 0


@pytest.mark.slow
def test_standard_model_is_broken_pgd_model_is_not(std_run, pgd_run):
    assert std_run.record.clean_accuracy > 0.95
    assert std_run.record.robust_accuracy <= 0.02
    assert pgd_run.record.robust_accuracy >= 0.5


def _pgd20(model, x, y, eps, seed=0):
    """A plain 20-step Linf PGD with random start (Madry et al.), written independently of the harness."""
    g = torch.Generator().manual_seed(seed)
    step = 2.5 * eps / 20
    delta = (torch.rand(x.shape, generator=g) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(20):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.mark.slow
def test_autoattack_at_least_as_strong_as_pgd20(repo, pgd_run):
    from safetensors.torch import load_file

    from harness.models.architectures import mnist_small_cnn

    net = mnist_small_cnn()
    net.load_state_dict(load_file(str(repo / "submissions" / "mnist-pgd" / "model.safetensors")))
    net.eval()
    d = np.load(repo / "harness" / "data" / "mnist_test.npz")
    x = torch.tensor(d["x"][:N], dtype=torch.float32)[:, None] / 255
    y = torch.tensor(d["y"][:N], dtype=torch.long)
    pgd_robust = _pgd20(net, x, y, 0.3).numpy()
    aa_robust = pgd_run.arrays["autoattack_robust"]
    assert 0 < pgd_robust.sum() < N  # the comparison is not vacuous
    stronger_pgd = np.nonzero(aa_robust & ~pgd_robust)[0]
    assert stronger_pgd.size == 0, f"PGD-20 broke examples AutoAttack did not: {stronger_pgd.tolist()}"


def test_checks_land_in_the_record(make_submission):
    """A model that outputs probabilities triggers AutoAttack's softmax check; the message is recorded."""
    from harness.models.architectures import mnist_small_cnn

    # seeded: with unlucky random weights no point is classified right, and nothing is attacked
    # (evaluate() used to reseed this process's RNG as a side effect; the worker does not)
    torch.manual_seed(0)
    net = torch.nn.Sequential(mnist_small_cnn(), torch.nn.Softmax(dim=1))
    path = make_submission("softmax-out", module=net, model={
        "format": "state_dict", "architecture": "mnist_small_cnn",
        "checkpoint": {"path": "model.pt", "sha256": "0" * 64}})
    # the architecture lacks the softmax: save a TorchScript archive instead
    ts = path.parent / "model.ts"
    torch.jit.script(net.eval()).save(str(ts))
    import yaml

    from harness.core.files import sha256_file
    spec = yaml.safe_load(path.read_text())
    spec["model"] = {"format": "torchscript", "checkpoint": {"path": "model.ts", "sha256": sha256_file(ts)}}
    spec["evaluation"] = {"n_examples": 10, "batch_size": 10}
    path.write_text(yaml.safe_dump(spec))
    (path.parent / "model.pt").unlink()  # every file of a submission must be covered by a hash
    res = evaluate(path, EvalOptions(device="cpu", progress=False, trust_code=True), stages=["clean", "autoattack"],
                   out=path.parent.parent / "rec.json", echo=lambda s: None)
    assert any("probability distribution" in m for m in res.record.autoattack.checks)


@pytest.mark.slow
def test_killed_evaluation_resumes_without_redoing_attacks(repo, tmp_path, monkeypatch):
    """Attack-level resumption inside a block (one block of 40 points here; the distributed tests
    cover resuming at the block level)."""
    from pyautoattack import AutoAttack

    sub = repo / "submissions" / "mnist-pgd" / "submission.yaml"
    out = tmp_path / "killed" / "rec.json"
    args = [sys.executable, "-m", "harness.cli", "eval", str(sub), "--n-examples", "40", "--batch-size", "40",
            "--device", "cpu", "--only", "clean,autoattack", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed_after = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            progress = list(out.parent.glob(".state/mnist-pgd/*/autoattack/blocks/0.progress.json"))
            if progress:
                done = json.loads(progress[0].read_text())["done"]
                if done:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed_after = list(done)
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_after and len(killed_after) < 4, f"the run was not killed midway (done: {killed_after})"
    assert not out.exists(), "no record may exist for a killed run"

    ran = []
    real = AutoAttack.run_standard_evaluation

    def spy(self, *a, **k):
        ran.extend(self.attacks_to_run)
        return real(self, *a, **k)

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", spy)
    # in process (sandbox="none"), so that the spy sees which attacks run
    resumed = evaluate(sub, EvalOptions(device="cpu", n_examples=40, batch_size=40, progress=False, sandbox="none"),
                       stages=["clean", "autoattack"], out=out, echo=lambda s: None)
    assert not set(ran) & set(killed_after), f"finished attacks {killed_after} were run again: {ran}"
    assert "clean" in resumed.record.provenance.resumed_stages

    fresh = evaluate(sub, EvalOptions(device="cpu", n_examples=40, batch_size=40, progress=False),
                     stages=["clean", "autoattack"], out=tmp_path / "fresh" / "rec.json", echo=lambda s: None)
    a = resumed.record.model_dump(exclude={"provenance"})
    b = fresh.record.model_dump(exclude={"provenance"})
    for rec in (a, b):
        rec["autoattack"].pop("seconds_per_attack")
        rec["autoattack"].pop("seconds_saved_by_certify_first")
    assert a == b
    for key in ("autoattack_robust", "autoattack_broken_by", "clean_correct"):
        assert (resumed.arrays[key] == fresh.arrays[key]).all()


@pytest.mark.slow
def test_one_block_equals_a_plain_autoattack_run(repo, tmp_path):
    """With N <= batch_size there is one block, seeded with the submission's seed: the harness's
    per-example flags are exactly those of a plain pyautoattack ``run_standard_evaluation`` (all
    attacks in one call) on the same points with the same seed."""
    from pyautoattack import AutoAttack
    from safetensors.torch import load_file

    from harness.models.architectures import mnist_small_cnn

    n = 16
    run = evaluate(repo / "submissions" / "mnist-fgsm" / "submission.yaml",
                   EvalOptions(device="cpu", n_examples=n, batch_size=n, progress=False, sandbox="none"),
                   stages=["clean", "autoattack"], out=tmp_path / "rec.json", echo=lambda s: None)
    net = mnist_small_cnn()
    net.load_state_dict(load_file(str(repo / "submissions" / "mnist-fgsm" / "model.safetensors")))
    net.eval()
    d = np.load(repo / "harness" / "data" / "mnist_test.npz")
    x = torch.tensor(d["x"][:n], dtype=torch.float32)[:, None] / 255
    y = torch.tensor(d["y"][:n], dtype=torch.long)
    aa = AutoAttack(net, norm="Linf", eps=0.3, seed=0, version="standard")
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=n)
    plain = (y_adv == y).numpy()
    assert 0 < plain.sum() < n  # some points broken, some not: the comparison is not vacuous
    assert len(set(run.arrays["autoattack_broken_by"][run.arrays["autoattack_broken_by"] >= 0].tolist())) > 1
    np.testing.assert_array_equal(run.arrays["autoattack_robust"], plain)
