"""Shared test helpers (moved from tests/test_bounds_ops.py)."""
from __future__ import annotations

import torch
import torch.nn as nn

from harness.bounds.ops import AffineOp, ElementwiseRelaxedOp, dot


class Shift(nn.Module):
    """A custom module: ``x + c`` with a buffer ``c``."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("c", torch.linspace(-0.5, 0.5, n))

    def forward(self, x):
        return x + self.c


class Cube(nn.Module):
    """A custom module: ``x ** 3`` (non-decreasing)."""

    def forward(self, x):
        return x ** 3


class ShiftOp(AffineOp):
    """Toy affine op: ``y = x + c``, exact rules (the module's live buffer is read each time)."""

    kind = "Shift"
    modules = (Shift,)
    diagonal = True

    def __init__(self, module: Shift):
        super().__init__()
        self.module = module

    @classmethod
    def from_node(cls, b, n):
        return cls(b.module(n)), [b.single_input(n)]

    def apply(self, x, bias=True):
        return x + self.module.c if bias else x

    def apply_abs(self, r):
        return r

    def diag_scale(self, s):
        return s

    def transpose(self, A):
        return A

    def bias_dot(self, A):
        return dot(A, self.module.c)


class CubeOp(ElementwiseRelaxedOp):
    """Toy relaxed op: ``y = x^3``; for a non-decreasing function the constants
    ``f(l) <= y <= f(u)`` are a sound (if loose) relaxation."""

    kind = "Cube"
    modules = (Cube,)
    monotone = True

    def forward(self, x):
        return x ** 3

    def relaxation(self, lo, hi):
        zero = torch.zeros_like(lo)
        return zero, lo ** 3, zero, hi ** 3




class ToyNet(nn.Module):
    def __init__(self, in_features: int = 16, classes: int = 3):
        super().__init__()
        self.fc1, self.shift = nn.Linear(in_features, 6), Shift(6)
        self.fc2, self.cube, self.fc3 = nn.Linear(6, 5), Cube(), nn.Linear(5, classes)

    def forward(self, x):
        h = torch.relu(self.shift(self.fc1(x.flatten(1))))
        return self.fc3(self.cube(self.fc2(h)))
