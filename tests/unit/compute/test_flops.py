"""FLOPs against hand counts and published numbers; training-FLOP multipliers against their derivation."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch.nn as nn

from harness.compute.flops import count_inference_flops
from harness.compute.training_cost import method_multiplier, to_fvcore_convention, training_flops
from harness.models.architectures import build_architecture, mnist_small_cnn
from harness.submission.schema import Training


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
    assert rec.value == pytest.approx(to_fvcore_convention(float(row["training_flops"]), "2 per multiply-add"),
                                      rel=0.01)


def test_declared_and_unknown_training_flops():
    declared = training_flops(Training(method="other", declared_flops=4e18,
                                       declared_flops_convention="2 per multiply-add"),
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


# --- the methods of reported rows (harness.compute.flops.OTHER_METHODS): one training step of each, written
# pass for pass after the authors' code (cited in harness/flops.py), on the small network above.
# FlopCounterMode counts matrix products only; the elementwise stand-ins below (the OT cost, the
# margins) are therefore free, as they are negligible beside a real network's passes.
import copy  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from harness.compute.training_cost import (  # noqa: E402
    OTHER_METHODS,
    UNDERIVED,
    MethodCost,
    RecipeFacts,
    lbgat_teacher_flops,
    reported_method_cost,
)


def _kl(out, target_logits):
    return F.kl_div(F.log_softmax(out, 1), F.softmax(target_logits, 1), reduction="batchmean")


def _nl(t):
    """A non-leaf view of ``t``: FlopCounterMode's module hooks refuse a leaf input under
    torch.autograd.grad (no FLOPs: elementwise)."""
    return t * 1


def _sign_step(x, g):
    return (x + 0.01 * g.sign()).detach()


def _kl_attack_step(net, x_adv, x):
    """A TRADES attack step as LBGAT and GAIR write it: net(x) is recomputed inside the step."""
    x_adv = x_adv.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_kl(net(_nl(x_adv)), net(x)), [x_adv])
    return _sign_step(x_adv, g)


def _gradalign(net, x, y, k):
    delta = torch.zeros_like(x, requires_grad=True)
    (g1,) = torch.autograd.grad(F.cross_entropy(net(x + delta), y), delta, create_graph=True)
    g1 = g1.detach()
    loss = F.cross_entropy(net(_sign_step(x, g1)), y)
    eta = (torch.rand_like(x) * 0.02 - 0.01).requires_grad_(True)
    (g2,) = torch.autograd.grad(F.cross_entropy(net(x + eta), y), eta, create_graph=True)
    (loss + 1 - F.cosine_similarity(g1, g2, dim=1).mean()).backward()


def _lbgat(net, x, y, k, teacher):
    x_adv = x + 0.001 * torch.randn_like(x)
    for _ in range(k):
        x_adv = _kl_attack_step(net, x_adv, x)
    out_adv, out_nat, out_t = net(x_adv), net(x), teacher(x)
    (F.mse_loss(out_adv, out_t) + F.cross_entropy(out_t, y) + 0.0 * _kl(out_adv, out_nat)).backward()


def _hat(net, x, y, k, helper):
    p_nat = F.softmax(net(x), 1)
    x_adv = x
    for _ in range(k):
        xa = x_adv.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.kl_div(F.log_softmax(net(_nl(xa)), 1), p_nat, reduction="sum"), [xa])
        x_adv = _sign_step(xa, g)
    x_hr = x + 2 * (x_adv - x)
    with torch.no_grad():
        y_hr = helper(x_adv).argmax(1)
    out_c, out_a, out_h = net(x), net(x_adv), net(x_hr)
    (F.cross_entropy(out_c, y) + _kl(out_a, out_c) + F.cross_entropy(out_h, y_hr)).backward()


def _gair_step(cw):
    return lambda net, x, y, k: _gair_exact(net, x, y, k, cw)


def _gair_exact(net, x, y, k, cw):
    """GAIR_trades_loss pass for pass: the attack, the optional CW attack, then logits_adv,
    (logits_cw,) and logits of the clean batch, one backward."""
    x_adv = x
    for _ in range(k):
        xa = x_adv.detach().requires_grad_(True)
        net(_nl(xa))  # mid_logit: the prediction that counts kappa
        (g,) = torch.autograd.grad(_kl(net(_nl(xa)), net(x)), [xa])
        x_adv = _sign_step(xa, g)
    x_cw = None
    if cw:
        net(x)  # pgd_generate's nat_output
        x_cw = x
        for _ in range(k):
            xc = x_cw.detach().requires_grad_(True)
            net.zero_grad()
            out = net(xc)
            (out.max(1)[0].sum() - out.gather(1, y[:, None]).sum()).backward()
            x_cw = _sign_step(xc, xc.grad)
    net.zero_grad()
    logits_adv = net(x_adv)
    logits_cw = net(x_cw) if cw else None
    logits = net(x)
    loss = F.cross_entropy(logits, y) + _kl(logits_adv, logits)
    if cw:
        loss = loss + _kl(logits_cw, logits)
    loss.backward()


def _fat_trades(net, x, y, k):
    clean = net(x)  # kept in the graph, as earlystop.py keeps it
    x_adv = x
    for _ in range(k):  # the upper bound: no example stops early
        xa = x_adv.detach().requires_grad_(True)
        net.zero_grad()
        _kl(net(xa), clean).backward(retain_graph=True)
        x_adv = _sign_step(xa, xa.grad)
    net.zero_grad()
    natural, adv = net(x), net(x_adv)
    (F.cross_entropy(natural, y) + _kl(adv, natural)).backward()


def _mma(net, x, y, k):
    F.cross_entropy(net(x), y).backward()  # the clean loss's gradient, kept aside
    x_adv = x
    for p in net.parameters():
        p.requires_grad_(False)
    for _ in range(k):  # AN-PGD on every example (the upper bound: all correctly classified)
        xa = x_adv.detach().requires_grad_(True)
        F.cross_entropy(net(xa), y).backward()
        x_adv = _sign_step(xa, xa.grad)
    net(x_adv)
    for _ in range(10):  # the bisection search for the margin
        net(x_adv * 0.5)
    for p in net.parameters():
        p.requires_grad_(True)
    F.cross_entropy(net(x_adv), y).backward()


def _feature_scatter(net, x, y, k):
    aux = copy.deepcopy(net)
    aux(x), aux(x)
    nat = aux(x)
    xs = x + 0.01
    for _ in range(k):
        xs = xs.detach().requires_grad_(True)
        lp = aux(xs)
        ot = ((lp[:, None, :] - nat[None, :, :]) ** 2).sum(-1).softmax(1).mean()  # elementwise stand-in
        aux.zero_grad()
        ot.backward(retain_graph=True)
        xs = _sign_step(xs, xs.grad)
        logits = net(xs)
    F.cross_entropy(logits, y).backward()


def _dyart(net, x, y, k):
    def margin(out):
        return out.gather(1, y[:, None])[:, 0] - out.logsumexp(1)

    with torch.no_grad():
        margin(net(x))
        margin(net(x))  # FAB's own check of the points
    x1 = x
    for _ in range(k):  # FAB: the margin's value and input gradient, then a check at the new point
        im = x1.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(margin(net(_nl(im))).sum(), im)
        x1 = _sign_step(im, g)
        with torch.no_grad():
            margin(net(x1))
    with torch.no_grad():
        margin(net(x1))
    xb = x1.detach().requires_grad_(True)
    torch.autograd.grad(margin(net(_nl(xb))).sum(), xb)
    (-margin(net(x1)).mean() + F.cross_entropy(net(x), y)).backward()


def _yopo(net, x, y, m):
    first = net[0]
    eta = torch.zeros_like(x)
    for _ in range(m):
        eta = eta.detach().requires_grad_(True)
        h = first(x + eta)
        h.retain_grad()
        F.cross_entropy(net[1:](h), y).backward()  # weight gradients accumulate over the m passes
        p = h.grad.detach()
        for _ in range(3):  # n = 3 steps through the first layer only
            e = eta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad((first(x + e) * p).sum(), e)
            eta = _sign_step(e, g)


def _backward_smoothing(net, x, y, k):
    with torch.no_grad():
        logits_nat = net(x)
    x_adv = x.detach().requires_grad_(True)  # the smoothed initialisation: KL to a noisy target
    (g,) = torch.autograd.grad(_kl(net(_nl(x_adv)), logits_nat + torch.rand_like(logits_nat)), [x_adv])
    x_adv = _sign_step(x_adv, g)
    for _ in range(k):
        xa = x_adv.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_kl(net(_nl(xa)), logits_nat), [xa])
        x_adv = _sign_step(xa, g)
    out = net(x)
    (F.cross_entropy(out, y) + _kl(net(x_adv), out)).backward()


def _adv_interp(net, x, y, k):
    aux = copy.deepcopy(net)
    feature = aux[:-1]  # mode='feature': the network up to the classifier layer
    x_init = (x + 0.01 * torch.rand_like(x)).requires_grad_(True)
    fea_b, fea_t = feature(_nl(x_init)), feature(x.flip(0))
    aux.zero_grad()
    (1 - F.cosine_similarity(fea_b, fea_t, dim=1)).mean().backward(retain_graph=True)
    x_tilde = _sign_step(x_init, -x_init.grad)
    F.cross_entropy(net(x_tilde), y).backward()


REPORTED_STEPS = {  # method -> (one training step, the extra network it runs or None)
    "gradalign": (_gradalign, None), "lbgat": (_lbgat, "teacher"), "hat": (_hat, "helper"),
    "fat-trades": (_fat_trades, None), "mma": (_mma, None), "feature-scatter": (_feature_scatter, None),
    "dyart": (_dyart, None), "yopo": (_yopo, None), "backward-smoothing": (_backward_smoothing, None),
    "adv-interp": (_adv_interp, None),
}


def _measure(step, net, x, y, k, extra=None):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            net(x)
    with FlopCounterMode(display=False) as total:
        step(net, x, y, k) if extra is None else step(net, x, y, k, extra)
    return total.get_total_flops(), fwd.get_total_flops()


@pytest.mark.parametrize("method, k", [
    ("gradalign", 1), ("lbgat", 10), ("lbgat", 3), ("hat", 10), ("fat-trades", 10), ("fat-trades", 4),
    ("mma", 10), ("feature-scatter", 1), ("feature-scatter", 2), ("dyart", 20), ("yopo", 5),
    ("backward-smoothing", 1), ("backward-smoothing", 3), ("adv-interp", 1),
])
def test_reported_method_costs_match_a_measured_training_step(method, k):
    from torch.utils.flop_counter import FlopCounterMode

    step, extra_kind = REPORTED_STEPS[method]
    net, x, y = _net(), torch.randn(64, 2), torch.randint(0, 10, (64,))
    extra_net = None
    if extra_kind is not None:
        torch.manual_seed(1)
        extra_net = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    total, fwd = _measure(step, net, x, y, k, extra_net)
    cost = reported_method_cost(f"other:{method}", RecipeFacts("cifar10", k, False, 100, 50_000))
    assert isinstance(cost, MethodCost), cost
    extra = 0.0
    if extra_net is not None:
        with FlopCounterMode(display=False) as ef:
            with torch.no_grad():
                extra_net(x)
        extra = ef.get_total_flops() * (3 if extra_kind == "teacher" else 1)
        # LBGAT's teacher is counted (3 teacher forwards, its forward/backward); HAT's helper, one
        # forward, is what the lower bound leaves out
        assert cost.extra_flops > 0 if extra_kind == "teacher" else cost.bound == "lower bound"
    assert (total - extra) / fwd == pytest.approx(cost.multiplier, rel=0.01)


@pytest.mark.parametrize("cw, k, expected", [(False, 10, 46), (True, 10, 80), (True, 3, 31)])
def test_gair_rst_phases_match_a_measured_training_step(cw, k, expected):
    net, x, y = _net(), torch.randn(64, 2), torch.randint(0, 10, (64,))
    total, fwd = _measure(_gair_step(cw), net, x, y, k)
    assert total / fwd == pytest.approx(expected, rel=0.01)  # 4K + 6 without the CW attack, 7K + 10 with it


def test_reported_method_costs_by_hand():
    def cost(method, k=10, awp=False, epochs=200, per_epoch=50_000, dataset="cifar10"):
        return reported_method_cost(method, RecipeFacts(dataset, k, awp, epochs, per_epoch))

    # GAIR-RST: Lambda 100 before epoch E/2 (4K + 6), Lambda 3 from epoch E/2 on (7K + 10); E = 200:
    # epochs 100..200 are the second phase, 101 of them
    assert cost("other:gair-rst").multiplier == pytest.approx((99 * 46 + 101 * 80) / 200)
    # MeanSparse's own part: one forward per training image (its base comes through base_models)
    ms = cost("other:meansparse", k=None, epochs=1, per_epoch=50_000)
    assert ms.multiplier == 1 and ms.bound == "lower bound"
    # MixedNUTS trains nothing itself
    assert cost("other:mixednuts", k=None, epochs=None, per_epoch=None).multiplier == 0
    # IKL-AT (DKL code): 3K + 6 per example, + 6 for AWP from epoch 10; K = 5, 200 epochs:
    # epochs 1-9 at 21, epochs 10-200 (191) at 27
    assert cost("other:ikl-at", k=5, awp=True).multiplier == pytest.approx((9 * 21 + 191 * 27) / 200) == 26.73
    assert cost("other:ikl-at", k=5).multiplier == 21
    # RST-AWP: RST's trades_loss 3K + 6 (36), + TradesAWP's 9 from epoch 10; 200 epochs
    assert cost("other:rst-awp", awp=True).multiplier == pytest.approx((9 * 36 + 191 * 45) / 200) == 44.595
    # the proxy-data PGD trainer: PGD-10 (23) + the clean forward of its accuracy meters
    assert cost("other:proxy-pgd").multiplier == 24
    # OA-AT, 8 epochs (K = 5 in the first quarter, epochs 1-2), AWP from epoch 10 never starts
    assert cost("other:oaat", awp=True, epochs=8).multiplier == pytest.approx((2 * 16 + 6 * 26) / 8)
    # OA-AT, 12 epochs: epochs 1-3 at K = 5; AWP (+6) in epochs 10-12
    assert cost("other:oa-at", awp=True, epochs=12).multiplier == pytest.approx((3 * 16 + 9 * 26 + 3 * 6) / 12)
    # DAJAT: per view 2K + 6, + 6 for AWP from epoch 10: 200 epochs -> 9 without, 191 with
    assert cost("other:dajat", k=5, awp=True).multiplier == pytest.approx((9 * 16 + 191 * 22) / 200)
    # CROWN-IBP's reported row: 3 (C + 2), an upper bound
    cr = cost("other:crown-ibp", k=0)
    assert (cr.multiplier, cr.bound) == (36, "upper bound")
    # the LBGAT teacher: a hand count of its convolutions and fvcore's batch-norm count
    assert cost("other:lbgat").extra_flops == 3 * (1_763_377_152 + 2_949_120 + 5_120)
    # loss-only variants cost what their base costs
    assert cost("other:score (TRADES with squared error)").multiplier == 27
    assert cost("other:pgd-he").multiplier == 23


@pytest.mark.parametrize("method, facts, why", [
    ("other:las-at", {}, "strategy network"),
    ("other:lbgat", {"awp": True}, "no multiplier for LBGAT + AWP"),
    ("other:hat", {"k": None}, "attack steps is unknown"),
    ("other:gair-rst", {"epochs": None}, "epochs are unknown"),
    ("other:meansparse", {"per_epoch": None}, "examples seen are unknown"),
    ("other:ikl-at", {"awp": True, "epochs": None}, "AWP starts at epoch 10"),
    ("other:rst-awp", {"k": None, "awp": True}, "attack steps is unknown"),
    ("other:gradalign", {"awp": None}, "whether AWP was used is unknown"),
    ("other:lbgat", {"dataset": "svhn"}, "not known to harness.data.registry"),
    ("other:somethingnew", {}, "no multiplier for somethingnew"),
    ("unknown", {}, "training method is unknown"),
])
def test_reported_methods_without_a_derivation_say_why(method, facts, why):
    f = {"k": 10, "awp": False, "epochs": 100, "per_epoch": 50_000, "dataset": "cifar10", **facts}
    got = reported_method_cost(method, RecipeFacts(f["dataset"], f["k"], f["awp"], f["epochs"], f["per_epoch"]))
    assert isinstance(got, str) and why in got


def test_every_derivation_is_tested_and_no_method_is_both():
    assert not set(OTHER_METHODS) & set(UNDERIVED)
    by_hand = {"gair-rst", "meansparse", "oaat", "oa-at", "dajat", "crown-ibp", "mixednuts", "ikl-at", "rst-awp",
               "proxy-pgd"}
    assert set(OTHER_METHODS) == set(REPORTED_STEPS) | by_hand


def test_lbgat_teacher_matches_fvcore():
    """LBGAT's ResNet18_cifar (models/resnetcifar.py): stages at stride 1, 1, 2, 2, average pool 8."""

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.short = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.short(x))

    class Teacher(nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
            blocks, cin = [], 64
            for cout, stride in zip((64, 128, 256, 512), (1, 1, 2, 2), strict=False):
                blocks += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.blocks, self.fc = nn.Sequential(*blocks), nn.Linear(512, classes)

        def forward(self, x):
            return self.fc(F.avg_pool2d(self.blocks(self.stem(x)), 8).flatten(1))

    for classes in (10, 100):
        assert count_inference_flops(Teacher(classes), (3, 32, 32)).total == lbgat_teacher_flops(classes)


def test_every_reported_method_is_derived_or_says_why():
    """Each ``other:<name>`` of leaderboard/training_recipes.csv has a derivation (OTHER_METHODS),
    costs what its base costs (SAME_PASSES_AS) or is listed with its reason (UNDERIVED)."""
    import csv
    from pathlib import Path

    from harness.compute.training_cost import SAME_PASSES_AS

    path = Path(__file__).resolve().parents[3] / "leaderboard" / "training_recipes.csv"
    with path.open(newline="") as fh:
        names = {r["method"][len("other:"):].split(" (")[0].strip()
                 for r in csv.DictReader(fh) if r["method"].startswith("other:")}
    assert names, "no other:<name> method in the recipes"
    missing = names - set(OTHER_METHODS) - set(SAME_PASSES_AS) - set(UNDERIVED)
    assert not missing, f"no derivation and no reason for: {sorted(missing)}"
    assert all(len(why) > 20 for why in UNDERIVED.values())
    for name in UNDERIVED:  # the reason reaches the board
        got = reported_method_cost(f"other:{name}", RecipeFacts("cifar10", 10, False, 100, 50_000))
        assert isinstance(got, str) and UNDERIVED[name] in got
