"""Shared test helpers (moved from tests/test_bounds_soundness.py)."""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.bounds import other_classes

METHODS = ("ibp", "crown-ibp", "crown")


DT = torch.float64


def mlp2d(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 3)).to(DT).eval()


def tiny_cnn(seed: int) -> nn.Module:
    """1x4x4 input; stride-2 convolution whose transpose needs output_padding."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(),          # -> 3x2x2
        nn.Conv2d(3, 4, 2, stride=1, padding=1), nn.ReLU(),          # -> 4x3x3
        nn.Flatten(), nn.Linear(36, 10), nn.ReLU(), nn.Linear(10, 4),
    ).to(DT).eval()


def _random_bn(bn: nn.modules.batchnorm._BatchNorm) -> None:
    n = bn.num_features
    bn.running_mean.copy_(torch.randn(n) * 0.3)
    bn.running_var.copy_(torch.rand(n) + 0.5)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(n))
        bn.bias.copy_(torch.randn(n) * 0.3)


class ResBlockNet(nn.Module):
    """conv-BN-relu, a residual block (``out += shortcut``), F.avg_pool2d, view, BN1d, linear."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 2 * 2, 6)
        self.bn3 = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x)))
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        out = F.relu(out)
        out = F.avg_pool2d(out, 2)
        out = out.view(out.size(0), -1)
        return self.head(F.relu(self.bn3(self.fc(out))))


def resnet_tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = ResBlockNet()
    for bn in (m.bn0, m.bn1, m.bn2, m.bn3):
        _random_bn(bn)
    return m.to(DT).eval()


class Normalized(nn.Module):
    """Like harness.models.load.NormalizedModel: (x - mean) / std with buffers, then the model."""

    def __init__(self, model, mean, std):
        super().__init__()
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=DT).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=DT).view(1, c, 1, 1))
        self.model = model

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def normalized_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    inner = nn.Sequential(nn.Conv2d(2, 3, 2, stride=1), nn.ReLU(), nn.AvgPool2d(2, stride=1),
                          nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).to(DT)
    return Normalized(inner, [0.4, 0.6], [0.3, 0.2]).eval()


class LeakyPoolNet(nn.Module):
    """1x4x4: conv, nn.LeakyReLU(0.1), nn.MaxPool2d(2), linear, F.leaky_relu(0.3), linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(12, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        h = self.pool(self.act(self.conv(x))).flatten(1)
        return self.fc2(F.leaky_relu(self.fc1(h), 0.3))


def leaky_pool_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return LeakyPoolNet().to(DT).eval()


class OverlapPoolNet(nn.Module):
    """2x5x5: max pooling of the input itself (overlapping 3x3 windows, stride 2, padding 1),
    conv, LeakyReLU, then two max poolings summed: overlapping windows in ceil mode (the last
    window passes the edge) and a dilated one."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 2, padding=1)         # 2x3x3 -> 4x4x4
        self.dpool = nn.MaxPool2d(2, stride=1, dilation=2)  # 4x4x4 -> 4x2x2
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        p = F.max_pool2d(x, 3, stride=2, padding=1)        # 2x5x5 -> 2x3x3
        h = F.leaky_relu(self.conv(p), 0.05)
        h = F.max_pool2d(h, 3, 2, ceil_mode=True) + self.dpool(h)
        return self.fc(h.flatten(1))


def overlap_pool_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return OverlapPoolNet().to(DT).eval()


# name: (builder, input shape, eps Linf, eps L2)
NETS = {
    "mlp2d": (mlp2d, (2,), 0.15, 0.2),
    "cnn1x4x4": (tiny_cnn, (1, 4, 4), 0.08, 0.25),
    "resblock_bn": (resnet_tiny, (2, 4, 4), 0.05, 0.12),
    "normalized": (normalized_cnn, (2, 4, 4), 0.03, 0.06),
    "leaky_maxpool": (leaky_pool_cnn, (1, 4, 4), 0.08, 0.25),
    "overlap_maxpool": (overlap_pool_cnn, (2, 5, 5), 0.05, 0.15),
}


def _points_linf(x: torch.Tensor, eps: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n_pts, *shape) points of the box [x-eps, x+eps] ∩ [0,1] around one example x (shape)."""
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    d = x.numel()
    u = torch.rand(n, *x.shape, generator=gen, dtype=DT)
    inside = lo + (hi - lo) * u
    if d <= 16:
        bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)), dtype=DT)
    else:
        bits = (torch.rand(n, d, generator=gen, dtype=DT) < 0.5).to(DT)
    verts = lo + (hi - lo) * bits.view(-1, *x.shape)
    return torch.cat([inside, verts, x.unsqueeze(0)])


def _points_l2(x: torch.Tensor, eps: float, n: int, gen: torch.Generator) -> torch.Tensor:
    d = x.numel()
    g = torch.randn(2 * n, d, generator=gen, dtype=DT)
    g = g / g.norm(dim=1, keepdim=True)
    radius = torch.cat([torch.ones(n, dtype=DT),
                        torch.rand(n, generator=gen, dtype=DT) ** (1.0 / d)])
    return torch.cat([x.unsqueeze(0), x + eps * (g * radius[:, None]).view(-1, *x.shape)])


def pgd(model, x, y, eps, norm, steps=40):
    """Minimise the worst margin f_y - max_{j != y} f_j inside the set (the bounded set)."""
    k = model(x).shape[1]
    delta = torch.zeros_like(x, requires_grad=True)
    step = 2.5 * eps / steps
    for _ in range(steps):
        logits = model(x + delta)
        others = logits.gather(1, other_classes(y, k))
        margin = logits.gather(1, y[:, None]).squeeze(1) - others.max(1).values
        (g,) = torch.autograd.grad(margin.sum(), delta)
        with torch.no_grad():
            if norm == "Linf":
                delta -= step * g.sign()
                delta.copy_(torch.max(torch.min(delta, torch.full_like(delta, eps)),
                                      torch.full_like(delta, -eps)))
                delta.copy_((x + delta).clamp(0, 1) - x)
            else:
                gn = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
                delta -= step * g / gn
                dn = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
                delta *= torch.clamp(eps / dn.clamp_min(1e-12), max=1.0)
    return (x + delta).detach()


def _check_contains(values: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor, tol=1e-9):
    """values: (n_pts, S); lb/ub: (S,)."""
    assert torch.all(values >= lb - tol), f"lower bound violated by {(lb - values).max().item()}"
    assert torch.all(values <= ub + tol), f"upper bound violated by {(values - ub).max().item()}"


