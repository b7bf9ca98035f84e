"""Shared test helpers (moved from tests/test_certifiers.py)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from harness.certifiers import Certifier, CertResult, Prepared, Skip
from harness.models.load import NormalizedModel


class ExactLinear(Certifier):
    """Exact certificate of an affine classifier ``Flatten -> Linear`` (optionally behind the
    harness's normalisation ``(x - mean) / std``, as the pipeline loads it): the distance to the
    nearest decision hyperplane, ``min_j (f_c - f_j)(x) / ||w_c - w_j||_*`` (dual norm: L2 for
    L2, L1 for Linf), ``w`` the rows of the map's matrix in input space. Sound (it ignores the
    [0, 1] clipping, which only shrinks the set)."""

    name, sound, norms = "toy-exact-linear", True, ("Linf", "L2")

    def prepare(self, model, input_shape, device, *, norm, options=None):
        self.check_norm(norm)
        inner, scale = model, None
        if isinstance(model, NormalizedModel):  # x -> (x - mean) / std: W acts on x as W diag(1 / std)
            inner = model.model
            scale = (1.0 / model.std.double()).expand(1, *input_shape).reshape(-1)
        layers = list(inner.children()) if isinstance(inner, nn.Sequential) else []
        if len(layers) != 2 or not isinstance(layers[0], nn.Flatten) or not isinstance(layers[1], nn.Linear):
            raise Skip("only Flatten -> Linear models")
        W = layers[1].weight.detach().double()
        if scale is not None:
            W = W * scale.to(W.device)
        diff = W[:, None, :] - W[None, :, :]
        dual = diff.norm(p=2 if norm == "L2" else 1, dim=2)
        return Prepared(norm=norm, state=(model, dual), info={"classes": int(W.shape[0])}, tolerance=0.0)

    @torch.no_grad()
    def run(self, prepared, x, y, *, index=None, eps, norm, eps_max, tol, seed=0):
        model, dual = prepared.state
        logits = model(x).double()
        pred = logits.argmax(1)
        gap = logits.gather(1, pred[:, None]) - logits
        ratio = gap / dual[pred]
        ratio.scatter_(1, pred[:, None], float("inf"))
        r = ratio.min(1).values
        correct = (pred == torch.as_tensor(y)).numpy()
        radius = np.where(correct, np.minimum(r.numpy(), eps_max), 0.0)
        return CertResult(certified=correct & (r.numpy() > eps), radius=radius, correct=correct,
                          counts={"examples": int(x.shape[0])})
