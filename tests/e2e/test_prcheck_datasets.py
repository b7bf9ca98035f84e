"""`harness pr-check` works for every dataset with no dataset on the runner: a CIFAR-100 PR and an
ImageNet PR with random-weight RobustBench model-zoo architectures, their checkpoints hosted over
local HTTPS, pass with no --data-dir (the input shape and the classes come from the dataset
registry); the FLOPs-scaled budget of the sandboxed forward pass is enforced."""
from __future__ import annotations

import pytest
import yaml
from helpers.hosting import FileServer
from helpers.prcheck_repo import check_rows, commit, hosted_entry, make_repo, pr_check, write_spec

from harness.compute.flops import count_inference_flops


@pytest.fixture
def repo(tmp_path, monkeypatch):
    return make_repo(tmp_path, monkeypatch)


def expected_flops(architecture: str, shape) -> float:
    import torch

    from harness.models.architectures import build_architecture

    torch.manual_seed(0)
    return count_inference_flops(build_architecture(architecture), shape).total


@pytest.mark.slow
def test_a_cifar100_zoo_pr_passes_with_no_data_dir_and_its_budget_is_enforced(repo, tmp_path, capsys, monkeypatch):
    arch = "robustbench.zoo:cifar100/Linf/Rice2020Overfitting"  # a PreAct ResNet-18, 11 M parameters
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_file))
        hosted_entry(repo, srv, tmp_path, "c100-zoo", "cifar100", arch)
        commit(repo)
        # a maintainer's cap far below what loading the model takes: one line naming the budget
        code, out, problems, _ = pr_check(repo, capsys, "--max-forward-seconds", "0.05")
        assert code == 1 and len(problems) == 1
        assert "sandboxed forward pass: loading the model exceeded its 0.05 s wall-clock limit" in problems[0]
        assert "the forward budget" in problems[0] and "finished stages" not in problems[0]
        code, out, problems, _ = pr_check(repo, capsys)
    assert code == 0, out
    rows = check_rows(out)
    assert rows["hosted checkpoint"].startswith("found in the cache and verified")  # fetched by the first run
    assert rows["logits"] == "shape (4, 100), all finite"
    assert rows["forward pass (sandboxed worker)"].startswith("4 random inputs 3x32x32: ")
    assert "scaled by the FLOPs" in rows["forward pass (sandboxed worker)"]
    flops = expected_flops(arch, (3, 32, 32))  # the same count on a normally built model
    assert rows["FLOPs (fvcore, on the empty model)"].startswith(f"{flops / 1e6:.3g} M per forward pass")


@pytest.mark.slow
def test_an_imagenet_zoo_pr_passes_with_no_data_dir(repo, tmp_path, capsys, monkeypatch):
    arch = "robustbench.zoo:imagenet/Linf/Salman2020Do_R18"  # a ResNet-18, 11.7 M parameters
    with FileServer(tmp_path) as srv:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(srv.ca_file))
        folder = hosted_entry(repo, srv, tmp_path, "in-zoo", "imagenet", arch)
        spec = yaml.safe_load((folder / "submission.yaml").read_text())
        del spec["threat_model"]  # ImageNet's default, Linf 4/255
        write_spec(folder, spec)
        commit(repo)
        code, out, problems, _ = pr_check(repo, capsys)
    assert code == 0, out
    rows = check_rows(out)
    assert rows["logits"] == "shape (4, 1000), all finite"
    assert rows["forward pass (sandboxed worker)"].startswith("4 random inputs 3x224x224: ")  # Res256Crop224
    assert "11.7 M parameters" in rows["architecture (meta device)"]
    flops = expected_flops(arch, (3, 224, 224))
    assert rows["FLOPs (fvcore, on the empty model)"].startswith(f"{flops / 1e9:.3g} G per forward pass")
