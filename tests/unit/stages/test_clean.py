"""Clean accuracy equals an independent loop, and the record carries what it promises."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.core.stats import clopper_pearson
from harness.models.architectures import mnist_small_cnn
from harness.runner.evaluate import evaluate
from harness.stages import EvalOptions


@pytest.mark.slow
def test_clean_accuracy_equals_independent_loop(repo, tmp_path):
    sub = repo / "submissions" / "mnist-standard"
    out = tmp_path / "rec.json"
    res = evaluate(sub / "submission.yaml", EvalOptions(device="cpu", n_examples=300, batch_size=64, progress=False),
                   stages=["clean", "flops"], out=out, echo=lambda s: None)
    # independent: raw architecture, raw weights, raw npz, one image at a time
    net = mnist_small_cnn()
    net.load_state_dict(load_file(str(sub / "model.safetensors")))
    net.eval()
    d = np.load(repo / "harness" / "data" / "mnist_test.npz")
    hits = 0
    with torch.no_grad():
        for i in range(300):
            x = torch.tensor(d["x"][i], dtype=torch.float32)[None, None] / 255.0
            hits += int(net(x).argmax().item() == int(d["y"][i]))
    assert res.record.clean_accuracy == hits / 300
    assert res.record.n_examples == 300
    lo, hi = res.record.clean_accuracy_ci95
    assert (lo, hi) == pytest.approx(clopper_pearson(hits, 300))
    assert lo <= res.record.clean_accuracy <= hi

    saved = json.loads(out.read_text())
    assert saved["schema_version"] == 1 and saved["submission_id"] == "mnist-standard"
    assert saved["flops_convention"].startswith("fvcore: 1 FLOP = 1 multiply-add")
    assert saved["inference_flops"] == 609_384  # the wrapper's sub/div are skipped (and listed) by fvcore
    assert saved["flops_skipped_ops"] == {"aten::div": 1, "aten::sub": 1}
    assert saved["training_flops"]["source"] == "estimated"
    prov = saved["provenance"]
    from harness.core.files import sha256_file
    assert prov["checkpoint_sha256"] == sha256_file(sub / "model.safetensors")
    assert prov["submission_sha256"] == sha256_file(sub / "submission.yaml")
    assert {"torch", "pyautoattack", "robustbench", "fvcore"} <= set(prov["packages"])
    assert set(prov["stage_seconds"]) == {"clean", "flops"}
    z = np.load(tmp_path / "rec.examples.npz")
    assert {"index", "label", "clean_correct"} <= set(z.files)
    assert z["clean_correct"].sum() == hits and (z["index"] == np.arange(300)).all()


def test_clopper_pearson_known_values():
    # hand-checkable edge cases: k = n gives upper 1 and lower (alpha/2)^(1/n)
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10))
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))
