"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019; :mod:`harness.bounds.smoothing`) as a
certifier. Probabilistic (``sound = False``): it certifies the *smoothed* classifier, each
certificate holding with probability 1 - alpha over the noise, so it is not part of the
certified <= robust <= clean sandwich of the base model, nor of certify-first.

Each example's noise comes from its own generator, seeded by
:func:`harness.certifiers.base.example_seed` of (evaluation seed, test-set index): the result
for an example does not depend on the batch, block or process it is evaluated in.

``options``: ``smoothing`` (required: a mapping with ``sigma`` and optionally ``n0``, ``n``,
``alpha``: the submission's ``smoothing`` section), ``batch_size`` (noisy copies per forward
pass, default 1000), ``noise_on_device`` (draw the noise on the model's device instead of the
CPU: faster on a GPU, but the draws then differ from a CPU run; default False),
``num_classes`` (else found from one forward pass).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
from scipy.stats import norm as normal

from harness.core.errors import HarnessError
from harness.models.load import CheckedModel

from ..bounds import smoothing as S
from .base import Certifier, CertResult, Prepared, Skip, example_seed

DEFAULTS = {"n0": 100, "n": 100_000, "alpha": 0.001}


class Smoothing(Certifier):
    name = "smoothing"
    sound = False
    norms = ("L2",)

    def prepare(self, model, input_shape, device, *, norm: str,
                options: Optional[Mapping[str, Any]] = None) -> Prepared:
        self.check_norm(norm)
        opts = dict(options or {})
        sm = opts.get("smoothing")
        if not sm:
            raise Skip("randomized smoothing needs the submission's smoothing section (sigma)")
        sm = {**DEFAULTS, **dict(sm)}
        sigma, n0, n, alpha = float(sm["sigma"]), int(sm["n0"]), int(sm["n"]), float(sm["alpha"])
        batch = int(opts.get("batch_size", 1000))
        S._check(sigma, n, alpha, batch)
        if n0 < 1:
            raise HarnessError("smoothing needs n0 >= 1")
        dev = torch.device(device)
        k = opts.get("num_classes")
        if k is None:
            with torch.no_grad():
                k = int(model(torch.zeros(1, *input_shape, device=dev)).shape[1])
        # the largest radius n samples can certify (all n draws on the top class)
        eps_max = float(sigma * normal.ppf(alpha ** (1.0 / n)))
        state = {"model": model, "sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "batch": batch,
                 "num_classes": int(k), "noise_on_device": bool(opts.get("noise_on_device", False))}
        return Prepared(norm=norm, state=state, info={"sigma": sigma, "n0": n0, "n": n, "alpha": alpha},
                        batch_size=1, eps_max=eps_max, tolerance=0.0)

    def run(self, prepared: Prepared, x, y, *, index=None, eps: float, norm: str, eps_max: float,
            tol: float, seed: int = 0) -> CertResult:
        st = prepared.state
        B = int(x.shape[0])
        if index is None or len(index) != B:
            raise HarnessError("smoothing needs the examples' test-set indices (its noise is drawn per example)")
        index = np.asarray(index, dtype=np.int64)
        labels = np.asarray(torch.as_tensor(y).cpu(), dtype=np.int64)
        pred = np.full(B, S.ABSTAIN, dtype=np.int64)
        radius = np.zeros(B, dtype=np.float64)
        for k in range(B):
            i = int(index[k])
            model = CheckedModel(st["model"], st["num_classes"], "certify, smoothing noise", example=i)
            gen = torch.Generator(device=x.device if st["noise_on_device"] else "cpu")
            gen.manual_seed(example_seed(seed, i, "smoothing"))
            p, r = S.certify(model, x[k:k + 1], st["sigma"], n0=st["n0"], n=st["n"], alpha=st["alpha"],
                             batch_size=st["batch"], generator=gen)
            pred[k], radius[k] = int(p[0]), float(r[0])
        correct = pred == labels
        return CertResult(certified=correct & (radius >= eps), radius=np.where(correct, radius, 0.0),
                          correct=correct, arrays={"pred": pred.astype(np.int16)},
                          counts={"abstained": int(np.sum(pred == S.ABSTAIN))})

    def details(self, prepared: Prepared, result: CertResult) -> dict:
        out = super().details(prepared, result)
        out["smoothed_accuracy"] = float(np.mean(result.correct)) if result.correct.size else 0.0
        return out
