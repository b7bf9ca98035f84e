"""The public entry point: :class:`BoundedModel`, margin specifications, and a cost estimate."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from harness.core.errors import HarnessError, SandwichViolation

from . import crown as CR
from . import ibp as I
from .graph import BoundGraph, build_graph
from .sets import InputSet, as_eps, parse_norm

Tensor = torch.Tensor

METHODS = ("ibp", "crown", "crown-ibp")


def parse_method(method: str) -> str:
    key = str(method).strip().lower().replace("_", "-")
    if key not in METHODS:
        raise HarnessError(f"unknown bound method {method!r}; use one of {', '.join(METHODS)}")
    return key


def other_classes(y: Tensor, num_classes: int) -> Tensor:
    """(B, K-1): for each example, the classes other than ``y`` in increasing order."""
    j = torch.arange(num_classes - 1, device=y.device).unsqueeze(0)
    return j + (j >= y.unsqueeze(1)).to(j.dtype)


def margin_spec(y: Tensor, num_classes: int, dtype=torch.float32) -> Tensor:
    """The margin specification ``C`` (B, K-1, K): row ``k`` is ``e_y - e_j`` for the k-th
    class ``j != y`` (see :func:`other_classes`), so ``C f = f_y - f_j``."""
    y = y.long()
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye[other_classes(y, num_classes)]


class BoundedModel:
    """A model traced once, with certified bounds on its outputs.

    ``BoundedModel(model, input_shape=(1, 28, 28))``; the model maps (B, *input_shape) inputs in
    [0, 1] to logits (B, K). Bounds follow the model's live parameters (IBP is differentiable, so
    it can be used for IBP training).

    ``max_elements`` caps the size (in floats) of the coefficient tensors of one CROWN backward
    pass for intermediate bounds; larger layers are processed in chunks.
    """

    def __init__(self, model: nn.Module, input_shape, *, max_elements: int = 2 ** 24):
        if not isinstance(model, nn.Module):
            raise HarnessError(f"BoundedModel needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.graph: BoundGraph = build_graph(model, self.input_shape)
        self.num_classes = int(self.graph.nodes[self.graph.output].shape[0])
        p = next(iter(list(model.parameters()) + list(model.buffers())), None)
        # inputs are cast to the model's dtype and device (left as they are for a model
        # without floating-point parameters or buffers)
        self.dtype = p.dtype if (p is not None and p.is_floating_point()) else None
        self.device = p.device if p is not None else None
        self.max_elements = int(max_elements)

    # ---- helpers -----------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """The model's output computed by the traced graph (equals ``model(x)``)."""
        return self.graph.forward(x)

    __call__ = forward

    def _prep_x(self, x: Tensor) -> Tensor:
        if not torch.is_tensor(x) or tuple(x.shape[1:]) != self.input_shape or x.dim() != len(self.input_shape) + 1:
            raise HarnessError(f"expected inputs of shape (B, {', '.join(map(str, self.input_shape))}), "
                               f"got {tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        dtype = self.dtype or (x.dtype if x.is_floating_point() else torch.float32)
        device = self.device or x.device
        if x.dtype != dtype or x.device != device:
            x = x.to(device=device, dtype=dtype)
        if x.numel() and (bool(x.detach().min() < -1e-6) or bool(x.detach().max() > 1 + 1e-6)):
            raise HarnessError("certified bounds need inputs in [0, 1] (normalisation belongs "
                               "inside the model)")
        return x

    def _prep_C(self, C: Optional[Tensor], B: int, x: Tensor) -> Optional[Tensor]:
        if C is None:
            return None
        C = C.to(dtype=x.dtype, device=x.device)
        if C.dim() == 2:
            C = C.unsqueeze(0).expand(B, *C.shape)
        if C.dim() != 3 or C.shape[0] != B or C.shape[2] != self.num_classes:
            raise HarnessError(f"spec C must have shape (B, S, {self.num_classes}) with B={B}, got "
                               f"{tuple(C.shape)}")
        return C

    # ---- bounds ------------------------------------------------------------------------------

    def bounds(self, x: Tensor, eps, norm: str = "Linf", method: str = "ibp",
               C: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds on ``C . f(x')`` (B, S) over all ``x'`` in the input set around
        ``x`` (or on the logits (B, K) when ``C`` is None).

        ``norm``: "Linf" (box ``[x-eps, x+eps]`` clipped to [0, 1]) or "L2" (ball of radius eps);
        ``eps``: a number or a (B,) tensor; ``method``: "ibp", "crown" or "crown-ibp".
        """
        return self.compute(x, eps, norm, method, C, lower=True, upper=True)

    def compute(self, x, eps, norm="Linf", method="ibp", C=None, lower=True, upper=True):
        """Like :meth:`bounds`, computing only the requested sides (the other is None)."""
        method = parse_method(method)
        norm = parse_norm(norm)
        self.graph.check_modes()
        x = self._prep_x(x)
        B = x.shape[0]
        inputs = InputSet(x, as_eps(eps, B, x.dtype, x.device), norm)
        C = self._prep_C(C, B, x)
        if B == 0:
            S = self.num_classes if C is None else C.shape[1]
            empty = x.new_zeros((0, S))
            return (empty if lower else None), (empty if upper else None)
        if method == "ibp":
            states, _ = I.propagate(self.graph, inputs)
            return I.spec_bounds(self.graph, states, C, lower, upper)
        if C is None:
            C = torch.eye(self.num_classes, dtype=x.dtype, device=x.device).expand(B, -1, -1)
        return CR.crown_bounds(self.graph, inputs, C, method, lower, upper, self.max_elements)

    def margin_lower_bounds(self, x: Tensor, y: Tensor, eps, norm: str = "Linf",
                            method: str = "crown") -> Tensor:
        """(B, K-1) lower bounds on ``f_y - f_j`` for the classes ``j != y`` (in the order of
        :func:`other_classes`)."""
        x = self._prep_x(x)
        y = self._prep_y(y, x.shape[0])
        C = margin_spec(y, self.num_classes, dtype=x.dtype).to(x.device)
        lb, _ = self.compute(x, eps, norm, method, C, lower=True, upper=False)
        return lb

    def _prep_y(self, y, B: int) -> Tensor:
        y = torch.as_tensor(y).long()
        if y.shape != (B,) or bool((y < 0).any()) or bool((y >= self.num_classes).any()):
            raise HarnessError(f"labels must be a ({B},) tensor of classes in [0, {self.num_classes})")
        return y

    @torch.no_grad()
    def certify(self, x: Tensor, y: Tensor, eps, norm: str = "Linf",
                method: str = "crown") -> Tensor:
        """(B,) bool: correctly classified and every margin lower bound > 0 at ``eps``.

        Also checks that each lower bound is below the actual margin at ``x`` (which lies in the
        set); a violation means a bug and raises :class:`SandwichViolation`.
        """
        x = self._prep_x(x)
        y = self._prep_y(y, x.shape[0]).to(x.device)
        logits = self.model(x)
        lb = self.margin_lower_bounds(x, y, eps, norm, method)
        return certified_from(logits, y, lb, self.num_classes)


def certified_from(logits: Tensor, y: Tensor, lb: Tensor, num_classes: int) -> Tensor:
    correct = logits.argmax(1) == y
    true_margin = logits.gather(1, y.unsqueeze(1)) - logits.gather(1, other_classes(y, num_classes))
    slack = 1e-4 * (1 + true_margin.abs())
    bad = (lb > true_margin + slack).any(1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise SandwichViolation(f"certified lower bound above the clean margin for example {k}: "
                                f"{lb[k].max().item():.6g} > {true_margin[k].min().item():.6g}")
    return correct & (lb > 0).all(1)


def estimate_cost(bm: BoundedModel, batch: int = 1) -> dict:
    """Size figures to decide whether certification is affordable (per ``batch`` examples).

    - ``relaxed_neurons`` / ``relaxed_layers``: output units per example and nodes of the ops
      whose relaxation needs input bounds (ReLU, LeakyReLU, MaxPool2d, ...);
      ``relu_neurons`` / ``relu_layers`` are the same figures under their historical names
      (every such op counts, ReLU or not); ``relaxed_kinds``: the op kinds, e.g. "ReLU";
    - ``activations``: floats in all intermediate tensors per example (the IBP cost scale);
    - ``crown_elements``: worst case (every neuron loose) floats of CROWN coefficients
      created for intermediate bounds: for each node whose bounds a relaxation needs, with
      ``n`` neurons, ``n * sum(numel of its ancestors)``; ``crown_ibp_elements`` the same for
      the final margin spec only.
    """
    g = bm.graph
    relaxed = g.relaxed_nodes()
    neurons = sum(g.nodes[i].numel for i in relaxed)
    kinds = sorted({g.nodes[i].op.kind for i in relaxed})
    activations = sum(n.numel for n in g.nodes)
    crown = 0
    for i in g.needs_bounds:
        crown += g.nodes[i].numel * sum(g.nodes[j].numel for j in g.ancestors[i])
    spec = (bm.num_classes - 1) * sum(g.nodes[j].numel for j in g.ancestors[g.output])
    return {
        "relu_layers": len(relaxed),
        "relu_neurons": neurons,
        "relaxed_layers": len(relaxed),
        "relaxed_neurons": neurons,
        "relaxed_kinds": "/".join(kinds),
        "activations": activations * batch,
        "input_dim": g.nodes[0].numel,
        "crown_elements": (crown + spec) * batch,
        "crown_ibp_elements": spec * batch,
        "nodes": len(g.nodes),
    }


def check_affordable(bm: BoundedModel, method: str, *, max_relu_neurons: int = 200_000,
                     max_crown_elements: float = 2e9,
                     max_crown_ibp_elements: float = 5e8) -> tuple[bool, str]:
    """(ok, reason): whether ``method`` is affordable on this model under the given caps.

    IBP costs about two forward passes and is always affordable. CROWN-IBP adds one backward
    pass with K-1 rows (capped by ``max_crown_ibp_elements`` coefficient floats per example).
    Full CROWN is capped by the number of relaxed neurons (ReLU and the other ops that relax
    with input bounds; ``max_relu_neurons``) and by its worst-case coefficient floats per
    example (:func:`estimate_cost`). For scale, on one CPU core pair: the MNIST small CNN is
    2.7e7 (well under a second per example), a 2-block width-8 ResNet on 32x32 1.9e8 (a few
    seconds), WideResNet-16-1 3.1e10 (minutes); the default cap 2e9 suits CPUs."""
    method = parse_method(method)
    if method == "ibp":
        return True, ""
    c = estimate_cost(bm)
    if method == "crown-ibp":
        if c["crown_ibp_elements"] > max_crown_ibp_elements:
            return False, (f"CROWN-IBP needs {c['crown_ibp_elements']:.3g} coefficient floats per "
                           f"example > {max_crown_ibp_elements:.3g}")
        return True, ""
    if c["relaxed_neurons"] > max_relu_neurons:
        return False, (f"{c['relaxed_neurons']} {c['relaxed_kinds']} neurons > "
                       f"{max_relu_neurons}")
    if c["crown_elements"] > max_crown_elements:
        return False, (f"full CROWN worst case {c['crown_elements']:.3g} coefficient floats per "
                       f"example > {max_crown_elements:.3g}")
    return True, ""
