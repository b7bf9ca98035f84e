"""Submissions are untrusted: malicious pickles, hash mismatches and path escapes are refused,
each with a one-line error, and nothing the payload carries runs."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
import yaml

from harness.cli import main
from harness.core.errors import HarnessError
from harness.models.load import load_model
from harness.submission.load import load_submission


class _Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _load(path, trust_code=False):
    sub = load_submission(path)
    return load_model(sub, input_shape=(1, 28, 28), num_classes=10, device=torch.device("cpu"),
                      trust_code=trust_code)


def test_malicious_pickle_is_refused_and_never_runs(make_submission, tmp_path, capsys):
    marker = tmp_path / "PWNED"

    def write(ck):
        with open(ck, "wb") as f:
            pickle.dump({"conv.weight": _Payload(marker)}, f)

    path = make_submission("evil", write=write)
    with pytest.raises(HarnessError) as e:
        _load(path)
    assert "refused" in str(e.value) and "weights_only" in str(e.value)
    assert not marker.exists()
    # through the CLI: one line on stderr, no traceback, non-zero exit
    assert main(["eval", str(path), "--only", "clean"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "refused" in err
    assert not marker.exists()


def test_payload_would_really_run_without_weights_only(tmp_path):
    """Guards the test above: the payload is live, so its absence proves the refusal."""
    marker = tmp_path / "PWNED"
    blob = pickle.dumps(_Payload(marker))
    pickle.loads(blob)  # the unsafe path the harness never takes
    assert marker.exists()


def test_hash_mismatch_is_refused(make_submission, capsys):
    path = make_submission("tampered")
    ck = path.parent / "model.pt"
    state = torch.load(ck, weights_only=True)
    state["0.bias"] += 1.0
    torch.save(state, ck)
    with pytest.raises(HarnessError) as e:
        load_submission(path)
    assert "hash mismatch" in str(e.value) and "model.checkpoint.sha256" in str(e.value)
    assert main(["validate", str(path)]) == 1
    assert "model.checkpoint.sha256: checkpoint hash mismatch" in capsys.readouterr().out


def test_path_escape_is_refused(make_submission, tmp_path):
    path = make_submission("escape")
    spec = yaml.safe_load(path.read_text())
    for bad in ("../escape/model.pt", "/etc/passwd"):
        spec["model"]["checkpoint"]["path"] = bad
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(HarnessError) as e:
            load_submission(path)
        assert "model.checkpoint.path" in str(e.value)


def test_symlink_escape_is_refused(make_submission, tmp_path):
    path = make_submission("linky")
    outside = tmp_path / "outside.pt"
    (path.parent / "model.pt").rename(outside)
    (path.parent / "model.pt").symlink_to(outside)
    with pytest.raises(HarnessError) as e:
        load_submission(path)
    assert "escapes" in str(e.value)


def test_safetensors_and_nested_state_dicts_load(make_submission):
    from safetensors.torch import save_file

    from harness.models.architectures import mnist_small_cnn

    net = mnist_small_cnn()
    path = make_submission("st", checkpoint_name="model.safetensors",
                           write=lambda ck: save_file(net.state_dict(), str(ck)))
    m = _load(path)
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(m.module(x), net.eval()(x), atol=1e-6)
    nested = make_submission("nested", write=lambda ck: torch.save({"state_dict": {f"module.{k}": v for k,
                                                                                   v in net.state_dict().items()}}, ck))
    assert torch.allclose(_load(nested).module(x), net(x), atol=1e-6)


class _WrongShape(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(784, 7)

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_wrong_output_shape_and_nan_logits_are_one_line_errors(make_submission, tmp_path):
    ts = tmp_path / "wrong.ts"
    torch.jit.script(_WrongShape()).save(str(ts))
    path = make_submission("wrong-shape", checkpoint_name="model.ts", write=lambda ck: ck.write_bytes(ts.read_bytes()),
                           model={"format": "torchscript", "checkpoint": {"path": "model.ts", "sha256": "0" * 64}})
    spec = yaml.safe_load(path.read_text())
    from harness.core.files import sha256_file
    spec["model"]["checkpoint"]["sha256"] = sha256_file(path.parent / "model.ts")
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(HarnessError, match=r"model output has shape \(2, 7\), expected \(N, 10\)"):
        _load(path, trust_code=True)  # the test's own TorchScript

    from harness.models.architectures import mnist_small_cnn
    net = mnist_small_cnn()
    with torch.no_grad():
        net[-1].bias.fill_(float("nan"))
    path = make_submission("nan-logits", module=net)
    with pytest.raises(HarnessError, match="NaN"):
        _load(path)


def test_checkpoint_that_does_not_fit_the_architecture(make_submission):
    from harness.models.architectures import mnist_mlp
    path = make_submission("misfit", module=mnist_mlp())
    with pytest.raises(HarnessError, match="does not fit architecture mnist_small_cnn"):
        _load(path)
