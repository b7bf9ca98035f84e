"""A gradient-masking wrapper around a real MNIST model is caught.

The wrapper quantises its input to 16 grey levels with ``torch.round``, whose gradient is exactly
zero: FGSM and PGD cannot move, so the model *looks* robust to them, while the black-box Square
attack (inside AutoAttack) breaks it as easily as the unwrapped model. The flags must fire for the
wrapper (``weak-attack-gap``, ``zero-gradients``, ``aa-zero-gradients``,
``aa-square-beats-whitebox``) and stay silent for the honest model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.diagnostics import (
    attack_ladder,
    capture_autoattack_messages,
    classify_autoattack_messages,
    gradient_alignment,
    ladder_flags,
    zero_gradient_flag,
    zero_gradient_fraction,
)
from harness.models import compat  # noqa: F401
from harness.models.architectures import mnist_small_cnn

REPO = Path(__file__).resolve().parents[3]
N = 40
EPS = 0.3


def load_mnist(n_eval=N):
    with np.load(REPO / "harness" / "data" / "mnist_test.npz") as d:
        x = torch.from_numpy(d["x"]).float().div(255).unsqueeze(1)
        y = torch.from_numpy(d["y"]).long()
    return x, y


def standard_model(x_all, y_all) -> nn.Module:
    """``submissions/mnist-standard`` if present, else a small CNN trained here for a few seconds on
    test images 5000-9999 (disjoint from the evaluated ones)."""
    model = mnist_small_cnn()
    ck = REPO / "submissions" / "mnist-standard" / "model.safetensors"
    if ck.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(ck)))
        return model.eval()
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xs, ys = x_all[5000:], y_all[5000:]
    for _ in range(2):
        perm = torch.randperm(xs.shape[0])
        for i in range(0, xs.shape[0], 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    return model.eval()


class QuantisedInput(nn.Module):
    """Gradient masking: round the input to ``levels`` grey levels (d round / dx = 0)."""

    def __init__(self, net: nn.Module, levels: int = 16):
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x):
        return self.net(torch.round(x * (self.levels - 1)) / (self.levels - 1))


def run_autoattack(model, x, y):
    from pyautoattack import AutoAttack

    # APGD-DLR (its zero-gradient check runs for the DLR losses) then Square, both shortened
    aa = AutoAttack(model, device="cpu", eps=EPS, norm="Linf", seed=0, version="custom",
                    attacks=["apgd-dlr", "square"])
    aa.apgd.n_iter, aa.apgd.n_restarts = 10, 1
    aa.square.n_queries = 300
    with capture_autoattack_messages() as messages:
        _, y_adv = aa.run_standard_evaluation(x, y, batch_size=N)
    return (y_adv == y).float().mean().item(), messages


@pytest.fixture(scope="module")
def setup():
    x_all, y_all = load_mnist()
    net = standard_model(x_all, y_all)
    return net, x_all[:N], y_all[:N]


def _all_flags(model, x, y):
    lad = attack_ladder(model, x, y, EPS, seed=0)
    aa_acc, messages = run_autoattack(model, x, y)
    flags = ladder_flags(lad, aa_acc) + classify_autoattack_messages(messages)
    zf = zero_gradient_flag(zero_gradient_fraction(model, x, y), n=len(y))
    if zf is not None:
        flags.append(zf)
    return lad, aa_acc, flags


def test_honest_model_is_broken_by_gradients_and_not_flagged(setup):
    net, x, y = setup
    lad, aa_acc, flags = _all_flags(net, x, y)
    assert lad["clean"] >= 0.9
    assert lad["pgd"] <= 0.05 and aa_acc <= 0.05
    assert flags == [], [f.message for f in flags]
    assert gradient_alignment(net, x, y, EPS)["n_finite"] == N


def test_gradient_masking_wrapper_is_flagged(setup):
    net, x, y = setup
    masked = QuantisedInput(net).eval()
    lad, aa_acc, flags = _all_flags(masked, x, y)
    # the gradient attacks see a strongly robust model ...
    assert lad["clean"] >= 0.9
    assert lad["fgsm"] >= 0.9 * lad["clean"] and lad["pgd"] >= 0.7 * lad["clean"]
    # ... that Square breaks
    assert aa_acc <= 0.2
    names = {f.name for f in flags}
    assert {"weak-attack-gap", "zero-gradients", "aa-zero-gradients", "aa-square-beats-whitebox"} <= names
    gap = [f for f in flags if f.name == "weak-attack-gap" and f.details["attack"] == "pgd"]
    assert gap and gap[0].severity == "error" and gap[0].value > 0.5
    # if the catastrophic-overfitting rule also matches, it says that PGD was not what broke it
    assert all(not f.details["pgd_broken"] for f in flags if f.name == "catastrophic-overfitting")
    zero = next(f for f in flags if f.name == "aa-zero-gradients")
    assert zero.value >= 0.9 * lad["clean"] * N  # every attacked point had a zero gradient
