"""With training images given, the diagnostics stage reports the local Lipschitz constant on train
and test points and their gap (Yang et al. 2020)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.diagnostics import local_lipschitz
from harness.runner.evaluate import evaluate
from harness.stages import EvalOptions


def test_train_test_lipschitz_gap(repo, tmp_path):
    d = np.load(repo / "harness" / "data" / "mnist_test.npz")
    # stand-in "training" images: test points 5000.. (any images of the right shape will do)
    np.savez(tmp_path / "train.npz", x=d["x"][5000:5030], y=d["y"][5000:5030])
    sub = repo / "submissions" / "mnist-standard" / "submission.yaml"
    res = evaluate(sub, EvalOptions(device="cpu", n_examples=30, progress=False, train_data=tmp_path / "train.npz"),
                   stages=["clean", "diagnostics"], out=tmp_path / "rec.json", echo=lambda s: None)
    li = res.record.diagnostics["lipschitz"]
    assert li["train"] is not None and li["gap"] == pytest.approx(li["test"] - li["train"])

    # independent recomputation of the train value on the raw images
    from harness.models.load import load_model
    from harness.submission.load import load_submission

    model = load_model(load_submission(sub), input_shape=(1, 28, 28), num_classes=10, device=torch.device("cpu"))
    x_train = torch.tensor(d["x"][5000:5030], dtype=torch.float32)[:, None] / 255
    ref = local_lipschitz(model.module, x_train, 0.3, "Linf", seed=0)
    assert li["train"] == pytest.approx(ref["mean"], rel=1e-5)
