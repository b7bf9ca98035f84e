"""ONNX (through onnx2torch) and TorchScript submissions load and give the same predictions as the
state_dict they came from."""
from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from harness.core.files import sha256_file
from harness.models.architectures import mnist_small_cnn
from harness.runner.evaluate import evaluate
from harness.stages import EvalOptions


def _export(fmt: str, net: torch.nn.Module, path):
    if fmt == "onnx":
        torch.onnx.export(net, torch.rand(1, 1, 28, 28), str(path), dynamo=False, opset_version=17)
    else:
        torch.jit.trace(net, torch.rand(1, 1, 28, 28)).save(str(path))


@pytest.mark.slow
def test_onnx_and_torchscript_match_state_dict(repo, tmp_path):
    net = mnist_small_cnn()
    net.load_state_dict(load_file(str(repo / "submissions" / "mnist-standard" / "model.safetensors")))
    net.eval()
    ref = evaluate(repo / "submissions" / "mnist-standard" / "submission.yaml",
                   EvalOptions(device="cpu", n_examples=200, progress=False), stages=["clean"],
                   out=tmp_path / "ref.json", echo=lambda s: None)
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.ts")):
        folder = tmp_path / "submissions" / f"as-{fmt}"
        folder.mkdir(parents=True)
        _export(fmt, net, folder / name)
        spec = yaml.safe_load((repo / "submissions" / "mnist-standard" / "submission.yaml").read_text())
        spec["id"] = f"as-{fmt}"
        spec["model"] = {"format": fmt, "checkpoint": {"path": name, "sha256": sha256_file(folder / name)}}
        (folder / "submission.yaml").write_text(yaml.safe_dump(spec))
        # TorchScript is code: only with trust_code (harness eval --trust-code), for one's own models
        res = evaluate(folder / "submission.yaml", EvalOptions(device="cpu", n_examples=200, progress=False,
                                                               trust_code=fmt == "torchscript"),
                       stages=["clean", "flops"], out=tmp_path / f"{fmt}.json", echo=lambda s: None)
        assert (res.arrays["clean_pred"] == ref.arrays["clean_pred"]).all(), fmt
        assert res.record.clean_accuracy == ref.record.clean_accuracy
        # onnx2torch may keep a few graph constants (shapes) as parameters
        assert 166_330 <= res.record.params <= 166_330 * 1.001
        # fvcore cannot trace these converted modules: the record says so instead of failing
        if res.record.inference_flops is None:
            assert "fvcore cannot analyse" in res.record.flops_error
        else:
            assert res.record.inference_flops == 609_384
