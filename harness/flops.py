"""Compute accounting: inference FLOPs and parameters (fvcore), and training FLOPs.

Convention: fvcore counts one multiply-add as one FLOP (a WideResNet-28-10 at 32x32 is 5.25 G).
Papers such as Bartoldson et al. (2024) count two per multiply-add; :func:`to_fvcore_convention`
converts their numbers.

Training FLOPs, when not declared, are estimated as

    forward FLOPs x examples seen x method multiplier

The multiplier counts passes over one example in units of one forward pass: forward = 1,
backward = 2 (gradients for activations and for weights, each about one forward), and one attack
step = one forward + one input-gradient backward = 2 (no weight gradients needed). This is the
only place the multipliers are derived; the harness's records and the leaderboard's reported rows
(``leaderboard/training_recipes.csv``) both use :func:`method_multiplier`.

- standard: 1 + 2 = 3
- PGD-K: K attack steps (2K) + forward and backward on the adversarial batch (3) = 2K + 3
- TRADES-K: one clean forward for the KL target (1) + K steps (2K) + forward and backward on the
  clean and the adversarial batch (3 + 3) = 2K + 7   (K = 10 gives 27, as Bartoldson et al.)
- MART-K: K steps of PGD on the cross-entropy (2K; its target is the label, so no extra clean
  forward) + forward and backward on the clean and the adversarial batch (3 + 3) = 2K + 6
- FGSM ("fast is better than free", with a random start): PGD with K = 1 = 5
- free-m (Shafahi et al. 2019): each minibatch is replayed m times; one replay is one forward and
  one backward that yields the weight and the input gradients together (3): 3m per example drawn,
  with epochs counted as passes over the data (not over the replays)
- AWP (adversarial weight perturbation) adds one more forward and backward of the training loss
  on the same batch, to find the weight perturbation: +3 for a loss on one batch (PGD, FGSM,
  standard), +6 for a loss on the clean and the adversarial batch (TRADES, MART); not defined for
  free or certified training
- IBP: the interval pass propagates a centre and a radius (2 forwards) plus the clean forward of the
  mixed loss (1), each with its backward (x3) = 9
- CROWN-IBP: IBP (2) + clean (1) + a CROWN backward pass from the (C-1)-row margin specification,
  which costs about C-1 forwards, all with backward: 3 (C + 2)
- other: no estimate; declare ``training.declared_flops``.

Examples seen = epochs x examples_per_epoch (default: the training-set size + extra_data).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .record import FLOPS_CONVENTION, TrainingFlopsRecord

def train_set_size(dataset: str) -> int | None:
    """One epoch of the dataset's training set (the registry's, harness.datasets); None: unknown."""
    from .datasets import find

    d = find(dataset)
    return None if d is None else d.train_size


@dataclass
class FlopCount:
    total: float
    params: int  # parameters of the modules the forward pass calls
    by_operator: dict[str, float]
    skipped: dict[str, int] = field(default_factory=dict)
    convention: str = FLOPS_CONVENTION
    params_unused: int = 0  # parameters of modules the forward pass never calls (e.g. kept for old checkpoints)


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_inference_flops(model: nn.Module, input_shape: tuple[int, ...], device: str | torch.device = "cpu") -> FlopCount:
    """fvcore's count for one input of shape ``input_shape`` (no batch dimension)."""
    from fvcore.nn import FlopCountAnalysis

    x = torch.zeros((1, *input_shape), device=device)
    analysis = FlopCountAnalysis(model.eval(), x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    # fvcore logs skipped operators as warnings; we report them in the record instead.
    logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)
    total = float(analysis.total())
    by_op = {k: float(v) for k, v in sorted(analysis.by_operator().items())}
    skipped = {str(k): int(v) for k, v in sorted(analysis.unsupported_ops().items())}
    unused = _unused_params(model, analysis.uncalled_modules())
    return FlopCount(total=total, params=count_params(model) - unused, by_operator=by_op, skipped=skipped,
                     params_unused=unused)


def _unused_params(model: nn.Module, uncalled: set[str]) -> int:
    """Parameters held only by modules the traced forward never called (robustbench's WideResNet
    with ``sub_block1=True`` keeps a whole unused block for checkpoint compatibility; it costs no
    FLOPs and is not part of the model's size). A parameter shared with a called module counts
    as used."""
    if not uncalled:
        return 0
    mods = dict(model.named_modules())
    used = set()
    for name, m in mods.items():
        if name not in uncalled:
            used.update(id(p) for p in m.parameters(recurse=False))
    seen, n = set(), 0
    for name in uncalled:
        m = mods.get(name)
        if m is None:
            continue
        for p in m.parameters(recurse=False):
            if id(p) not in used and id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
    return int(n)


def to_fvcore_convention(flops: float, convention: str) -> float:
    """Convert a FLOP count to fvcore's 1-per-multiply-add convention."""
    if convention.startswith("2"):
        return flops / 2.0
    if convention.startswith("1"):
        return flops
    raise ValueError(f"unknown FLOP convention {convention!r}")


#: methods whose multiplier needs attack_steps >= 1 (for free: the replay count m)
STEP_METHODS = ("pgd", "trades", "mart", "free")
#: methods (a reported row's ``other:<name>``) that change only the loss of a method above, not its
#: passes over the data, so they cost what that method costs:
SAME_PASSES_AS = {
    # Pang et al. 2022 (SCORE): TRADES with the squared error in place of the KL divergence, in
    # the attack and in the loss: the same clean target, K attack steps, clean and adversarial passes
    "score": "trades",
    # Cui et al. 2023 (IKL-AT, "Decoupled KL"): TRADES with the improved KL loss; its class-wise
    # global information is a running mean of the batch's outputs, no extra pass
    "ikl-at": "trades",
    # Huang et al. 2020 (self-adaptive training on TRADES): the soft targets are a moving average
    # of the predictions the training pass computes anyway
    "trades-sat": "trades",
    # Pang et al. 2020 (hypersphere embedding): PGD-K training; the feature and weight normalisation
    # are part of the network, hence of its forward FLOPs
    "pgd-he": "pgd",
    # Pang et al. 2020 (Max-Mahalanobis centre loss): PGD-K training on adversarial examples only,
    # with the MMC loss in place of the cross-entropy
    "mmc-pgd": "pgd",
}
#: the cost of one forward and backward of the training loss, which AWP spends once more
AWP_EXTRA = {"standard": 3.0, "pgd": 3.0, "fgsm": 3.0, "trades": 6.0, "mart": 6.0}


def method_multiplier(method: str, attack_steps: int, num_classes: int, awp: bool = False) -> float | None:
    """Forward-pass equivalents spent per training example (see the module docstring); None when
    the method has no estimate (``other``, AWP on a method it is not defined for, or a step method
    without its step count)."""
    k = attack_steps
    if method in STEP_METHODS and (k is None or k < 1):
        return None
    base = {
        "standard": lambda: 3.0,
        "pgd": lambda: 2.0 * k + 3,
        "trades": lambda: 2.0 * k + 7,
        "mart": lambda: 2.0 * k + 6,
        "fgsm": lambda: 5.0,
        "free": lambda: 3.0 * k,
        "ibp": lambda: 9.0,
        "crown-ibp": lambda: 3.0 * (num_classes + 2),
    }.get(method)
    if base is None:
        return None
    if awp:
        if method not in AWP_EXTRA:
            return None
        return base() + AWP_EXTRA[method]
    return base()


def describe_method(method: str, attack_steps: int | None, awp: bool = False) -> str:
    """``TRADES-10 + AWP``, ``free (m=8)``, ``FGSM``: how the tables name a training method
    (``TRADES-?`` when the step count is not known)."""
    name = {"standard": "standard", "pgd": "PGD", "trades": "TRADES", "mart": "MART", "fgsm": "FGSM",
            "free": "free", "ibp": "IBP", "crown-ibp": "CROWN-IBP"}.get(method, method)
    k = attack_steps if attack_steps else "?"
    if method == "free":
        name += f" (m={k})"
    elif method in STEP_METHODS:
        name += f"-{k}"
    return name + (" + AWP" if awp else "")


def training_flops(training, dataset: str, forward_flops: float | None, num_classes: int) -> TrainingFlopsRecord:
    """``training`` is the submission's :class:`harness.submission.Training`."""
    if training.declared_flops is not None:
        value = to_fvcore_convention(training.declared_flops, training.declared_flops_convention)
        return TrainingFlopsRecord(
            value=value, source="declared", convention=FLOPS_CONVENTION,
            formula=f"declared by the submission ({training.declared_flops:.4g}, {training.declared_flops_convention})",
        )
    awp = bool(getattr(training, "awp", False))
    mult = method_multiplier(training.method, training.attack_steps, num_classes, awp)
    per_epoch = training.examples_per_epoch
    if per_epoch is None and train_set_size(dataset) is not None:
        per_epoch = train_set_size(dataset) + training.extra_data
    if mult is None or training.epochs is None or per_epoch is None or forward_flops is None:
        missing = [n for n, v in (("a known method multiplier", mult), ("training.epochs", training.epochs),
                                  ("training.examples_per_epoch", per_epoch), ("inference FLOPs", forward_flops))
                   if v is None]
        return TrainingFlopsRecord(value=None, source="unknown", convention=FLOPS_CONVENTION,
                                   formula="cannot estimate without " + ", ".join(missing)
                                   + "; declare training.declared_flops")
    seen = float(training.epochs) * per_epoch
    return TrainingFlopsRecord(
        value=forward_flops * seen * mult, source="estimated", convention=FLOPS_CONVENTION,
        multiplier=mult, examples_seen=seen, forward_flops=forward_flops,
        formula=f"forward FLOPs x examples seen x multiplier "
        f"({describe_method(training.method, training.attack_steps, awp)}: {mult:g}) "
        f"= {forward_flops:.4g} x {seen:.4g} x {mult:g}",
    )
