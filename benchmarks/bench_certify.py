"""Benchmark: certified bounds (IBP, CROWN-IBP, CROWN) against a plain forward pass.

    python benchmarks/bench_certify.py [--n-ibp 256] [--n-crown 16] [--n-radius 8] [--threads 2]

For two models with random weights, behind a NormalizedModel-style sub/div normalisation:

- ``mnist_small_cnn`` (Wong & Kolter's small CNN; 1x28x28 inputs; Linf eps 0.005);
- ``resnet2``, a small ResNet-like net (stem conv + 2 residual blocks with BatchNorm, the second
  strided with a 1x1-conv shortcut, global average pooling; 3x32x32 inputs; Linf eps 2/1000);

it prints examples per second through ``BoundedModel.certify`` for each method and through
``model(x)`` (the baseline, same batch), the slowdown of each method vs that baseline, the
fraction certified, and the cost of ``certified_radius`` (batched bisection) in bound calls.
"Examples per second" counts every example whose certificate was decided, certified or not.
Random weights have many unstable ReLUs, so CROWN figures are pessimistic for trained models.
Times are process CPU seconds by default (one thread), so that the figures hold on a shared
machine; ``--clock wall --threads N`` measures elapsed time instead. The default run takes about
half a minute of CPU.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.bounds import BoundedModel, certified_radius, estimate_cost
from harness.models.architectures import mnist_small_cnn


class Normalized(nn.Module):
    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, c, 1, 1))
        self.model = model

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet2(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.stem(x)))
        out = self.layer2(self.layer1(out))
        out = F.avg_pool2d(out, 8)
        return self.linear(out.view(out.size(0), -1))


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def build(name: str) -> tuple[nn.Module, tuple, float]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "mnist_small_cnn":
        return Normalized(mnist_small_cnn(), [0.1307], [0.3081]).eval(), (1, 28, 28), 0.005
    net = ResNet2()
    _randomise_bn(net, gen)
    return Normalized(net, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]).eval(), (3, 32, 32), 2e-3


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
_clock = time.process_time


def _timed(fn, repeat: int = 1):
    """Best of ``repeat`` runs, in seconds of the chosen clock."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = _clock()
        out = fn()
        best = min(best, _clock() - t0)
    return best, out


def bench_model(name: str, n_ibp: int, n_crown: int, n_radius: int) -> None:
    model, shape, eps = build(name)
    t_build, bm = _timed(lambda: BoundedModel(model, shape))
    cost = estimate_cost(bm)
    gen = torch.Generator().manual_seed(1)
    x_all = torch.rand(max(n_ibp, n_crown, n_radius), *shape, generator=gen)
    with torch.no_grad():
        y_all = model(x_all).argmax(1)  # label = clean prediction, so certification decides
    print(f"\n== {name}: input {shape}, {cost['relu_neurons']} ReLU neurons in "
          f"{cost['relu_layers']} layers, Linf eps={eps:g}; traced in {t_build:.3f}s")

    # baseline: plain forward pass on the largest batch used
    with torch.no_grad():
        model(x_all[:8])
        t_fwd, _ = _timed(lambda: model(x_all[:n_ibp]), repeat=20)
    fwd_rate = n_ibp / t_fwd
    print(f"{'method':<12}{'examples':>9}{'seconds':>10}{'ex/s':>12}{'x forward':>12}{'certified':>11}")
    print(f"{'forward':<12}{n_ibp:>9}{t_fwd:>10.4f}{fwd_rate:>12.1f}{1.0:>12.1f}{'-':>11}")
    for method, n in (("ibp", n_ibp), ("crown-ibp", n_ibp), ("crown", n_crown)):
        x, y = x_all[:n], y_all[:n]
        bm.certify(x[:2], y[:2], eps, "Linf", method)  # warm-up
        t, cert = _timed(lambda x=x, y=y, method=method: bm.certify(x, y, eps, "Linf", method),
                         repeat=1 if method == "crown" else 5)
        rate = n / t
        print(f"{method:<12}{n:>9}{t:>10.4f}{rate:>12.1f}{fwd_rate / rate:>12.1f}"
              f"{float(cert.float().mean()):>11.2f}")

    x, y = x_all[:n_radius], y_all[:n_radius]
    eps_max, tol = 4 * eps, eps / 8
    print(f"radius search: {n_radius} examples, eps_max={eps_max:g}, tol={tol:g} "
          "(calls: batched bound calls; evals/ex: bound evaluations per example)")
    count = {"examples": 0}
    inner = BoundedModel.margin_lower_bounds.__get__(bm)

    def counted(xb, *args, **kwargs):
        count["examples"] += int(xb.shape[0])
        return inner(xb, *args, **kwargs)

    bm.margin_lower_bounds = counted
    for method in ("ibp", "crown-ibp", "crown"):
        count["examples"] = 0
        t, (r, calls) = _timed(lambda method=method: certified_radius(bm, x, y, eps_max, "Linf", method, tol))
        evals = count["examples"] / n_radius
        print(f"  {method:<10} {calls:>3} calls, {evals:5.2f} evals/ex, {t:8.3f}s, "
              f"{n_radius / t:9.2f} ex/s, {fwd_rate * t / n_radius:9.0f}x forward, "
              f"mean radius {float(r.mean()):.5f}"
              + (" (all at eps_max)" if bool((r == eps_max).all()) else ""))
    del bm.margin_lower_bounds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-ibp", type=int, default=256, help="examples for forward/IBP/CROWN-IBP")
    ap.add_argument("--n-crown", type=int, default=8, help="examples for full CROWN")
    ap.add_argument("--n-radius", type=int, default=4, help="examples for the radius search")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=sorted(CLOCK), default="cpu",
                    help="cpu: process CPU seconds (robust on a shared machine; with 1 thread it "
                         "equals wall time on an idle one); wall: elapsed seconds")
    ap.add_argument("--models", nargs="+", default=["mnist_small_cnn", "resnet2"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    global _clock
    _clock = CLOCK[args.clock]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU, "
          f"{args.clock} clock (seconds and rates below are {args.clock} seconds)")
    t0 = time.perf_counter()
    for name in args.models:
        bench_model(name, args.n_ibp, args.n_crown, args.n_radius)
    print(f"\ntotal {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
