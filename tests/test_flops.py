"""FLOPs against hand counts and published numbers; training-FLOP multipliers against their derivation."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch.nn as nn

from harness.architectures import build_architecture, mnist_small_cnn
from harness.flops import count_inference_flops, method_multiplier, training_flops, to_fvcore_convention
from harness.submission import Training


def test_small_cnn_by_hand():
    # conv1: 16 out-channels x 14x14 positions x (1x4x4) MACs; conv2: 32 x 7x7 x (16x4x4);
    # fc1: 1568x100; fc2: 100x10.  One multiply-add = one FLOP.
    conv = 16 * 14 * 14 * 16 + 32 * 7 * 7 * 16 * 16
    fc = 1568 * 100 + 100 * 10
    params = (16 * 16 + 16) + (32 * 16 * 16 + 32) + (1568 * 100 + 100) + (100 * 10 + 10)
    fc_count = count_inference_flops(mnist_small_cnn(), (1, 28, 28))
    assert fc_count.by_operator == {"conv": conv, "linear": fc}
    assert fc_count.total == conv + fc == 609_384
    assert fc_count.params == params
    assert fc_count.skipped == {}


def test_skipped_operators_are_reported():
    class WithSigmoid(nn.Module):
        def forward(self, x):
            return (x.flatten(1) * 2).sigmoid()

    fc = count_inference_flops(WithSigmoid(), (1, 2, 2))
    assert fc.total == 0 and "aten::sigmoid" in fc.skipped


def test_wideresnet_28_10_matches_published_count():
    """RobustBench's WRN-28-10 at 32x32: 5.25 G multiply-adds and 36.5 M parameters."""
    net = build_architecture("robustbench.WideResNet", {"depth": 28, "widen_factor": 10})
    fc = count_inference_flops(net, (3, 32, 32))
    assert fc.total / 1e9 == pytest.approx(5.25, abs=0.005)
    assert fc.params / 1e6 == pytest.approx(36.5, abs=0.05)


@pytest.mark.parametrize("method, k, expected", [
    ("standard", 0, 3),      # forward 1 + backward 2
    ("pgd", 10, 23),         # 10 x (forward + input-gradient backward) + 3
    ("trades", 10, 27),      # the scaling-law paper's multiplier for TRADES-10
    ("fgsm", 1, 5),
    ("ibp", 0, 9),
    ("other", 0, None),
])
def test_method_multipliers(method, k, expected):
    assert method_multiplier(method, k, num_classes=10) == expected


def test_training_flops_reproduce_scaling_law_reference(repo):
    """Bartoldson et al.'s WRN-82-8: 27 x forward x examples seen, in their 2-per-MAC convention."""
    ref = Path(repo).parent / "shared" / "reference" / "training_compute_cifar10_linf.csv"
    row = {"inference_flops_per_image": "23.0e9", "examples_seen": "349.2e6", "training_flops": "2.17e20"}
    if ref.exists():
        with open(ref) as f:
            row = next(r for r in csv.DictReader(f) if r["robustbench_id"] == "Bartoldson2024Adversarial_WRN-82-8")
    fwd_fvcore = to_fvcore_convention(float(row["inference_flops_per_image"]), "2 per multiply-add")
    seen = float(row["examples_seen"])
    t = Training(method="trades", attack_steps=10, epochs=seen / 50_000, examples_per_epoch=50_000)
    rec = training_flops(t, "cifar10", fwd_fvcore, 10)
    assert rec.source == "estimated" and rec.multiplier == 27
    assert rec.value == pytest.approx(to_fvcore_convention(float(row["training_flops"]), "2 per multiply-add"), rel=0.01)


def test_declared_and_unknown_training_flops():
    declared = training_flops(Training(method="other", declared_flops=4e18, declared_flops_convention="2 per multiply-add"),
                              "cifar10", 1e9, 10)
    assert declared.source == "declared" and declared.value == 2e18
    unknown = training_flops(Training(method="other"), "cifar10", 1e9, 10)
    assert unknown.value is None and "declared_flops" in unknown.formula
    # default examples per epoch: the training set plus extra data
    est = training_flops(Training(method="standard", epochs=2, extra_data=10_000), "mnist", 100.0, 10)
    assert est.examples_seen == 2 * 70_000 and est.value == 100.0 * 140_000 * 3


@pytest.mark.parametrize("method, k, awp, expected", [
    ("mart", 10, False, 26),     # 2K attack + clean and adversarial forward/backward (6), no clean target pass
    ("free", 8, False, 24),      # 8 replays x (forward + backward with weight and input gradients)
    ("pgd", 10, True, 26),       # PGD-10 (23) + one more forward/backward of the loss for AWP (3)
    ("trades", 10, True, 33),    # TRADES-10 (27) + AWP on the clean+adversarial loss (6)
    ("mart", 10, True, 32),
    ("fgsm", 1, True, 8),
    ("free", 8, True, None),     # AWP is not defined for free training
    ("ibp", 0, True, None),
    ("pgd", 0, False, None),     # a step method without its steps
    ("free", 0, False, None),
])
def test_more_method_multipliers(method, k, awp, expected):
    assert method_multiplier(method, k, num_classes=10, awp=awp) == expected


# --- an independent check of the multipliers: run one real training step of each method on a
# small network under torch's FlopCounterMode (which counts the forward and backward matmuls) and
# compare the FLOPs per example with method_multiplier x the forward FLOPs per example.
import torch  # noqa: E402


def _net():
    import torch.nn as nn
    # a tiny input and output layer around wide hidden layers: the first layer's input gradient and
    # weight gradient are then negligible, so "backward = 2 forwards" holds to within 0.5%
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def _attack_step(net, x_adv, loss_fn):
    x_adv = x_adv.detach().requires_grad_(True)
    for p in net.parameters():  # input gradient only, as attacks compute it
        p.requires_grad_(False)
    loss_fn(net(x_adv)).backward()
    for p in net.parameters():
        p.requires_grad_(True)
    return (x_adv + 0.01 * x_adv.grad.sign()).detach()


def _train_step(net, x, y, method, k, awp):
    import torch.nn.functional as F

    def weight_step(loss):
        loss.backward()  # weight gradients (and the optimiser update, which is not a matmul)

    if method == "standard":
        x_adv = x
    elif method == "free":
        delta = torch.zeros_like(x)
        for _ in range(k):  # each replay: one forward, one backward giving weight and input gradients
            d = delta.clone().requires_grad_(True)
            loss = F.cross_entropy(net(x + d), y)
            loss.backward()
            delta = (d + 0.01 * d.grad.sign()).detach()
        return
    elif method == "trades":
        with torch.no_grad():
            target = F.softmax(net(x), 1)  # the clean forward for the KL target
        x_adv = x
        for _ in range(k):
            x_adv = _attack_step(net, x_adv, lambda out: F.kl_div(F.log_softmax(out, 1), target, reduction="batchmean"))
    else:  # pgd, mart, fgsm: the attack's target is the label
        x_adv = x
        for _ in range(1 if method == "fgsm" else k):
            x_adv = _attack_step(net, x_adv, lambda out: F.cross_entropy(out, y))
    if method in ("trades", "mart"):
        def full_loss():
            return F.cross_entropy(net(x), y) + F.cross_entropy(net(x_adv), y)
    else:
        def full_loss():
            return F.cross_entropy(net(x_adv), y)
    if awp:
        weight_step(full_loss())  # the weight perturbation's forward and backward
    weight_step(full_loss())


@pytest.mark.parametrize("method, k, awp", [
    ("standard", 0, False), ("pgd", 10, False), ("pgd", 3, True), ("trades", 10, False), ("trades", 5, True),
    ("mart", 10, False), ("mart", 4, True), ("fgsm", 1, False), ("free", 8, False),
])
def test_multipliers_match_a_measured_training_step(method, k, awp):
    from torch.utils.flop_counter import FlopCounterMode

    net = _net()
    x = torch.randn(64, 2)
    y = torch.randint(0, 10, (64,))
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            net(x)
    with FlopCounterMode(display=False) as step:
        _train_step(net, x, y, method, k, awp)
    measured = step.get_total_flops() / fwd.get_total_flops()
    assert measured == pytest.approx(method_multiplier(method, k, 10, awp), rel=0.01)
