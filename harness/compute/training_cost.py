"""Training FLOPs: the pure arithmetic (no torch), used by the harness's flops stage and by the
leaderboard's reported rows (``leaderboard/recipes.py``); :mod:`harness.compute.flops` re-exports it.

Convention: fvcore's, one multiply-add is one FLOP (see :mod:`harness.compute.flops`).

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

The reported rows (``leaderboard/training_recipes.csv``) also name methods ``other:<name>``;
:func:`reported_method_cost` derives their cost per example seen, each from the authors' training
code, in the same units (:data:`OTHER_METHODS`): exact, or a lower or upper bound when a part of
the cost is not known (an extra network of unknown size, a data-dependent early stop), with what it
leaves out. Methods it cannot derive keep "unknown" with the reason (:data:`UNDERIVED`).

Post-training and training-free methods (MeanSparse, MixedNUTS, adaptive smoothing, SODEF) count
only their own passes here; the recipe's ``base_models`` column adds the base models' training
FLOPs (``leaderboard.recipes.training_computes``), and a part that is not known makes the total a
lower bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from harness.record.schema import FLOPS_CONVENTION, TrainingFlopsRecord


def train_set_size(dataset: str) -> int | None:
    """One epoch of the dataset's training set (the registry's, harness.data.registry); None: unknown."""
    from harness.data.registry import find

    d = find(dataset)
    return None if d is None else d.train_size


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


# ---------------------------------------------------------------------------------------------
# The methods of reported rows (leaderboard/training_recipes.csv, ``other:<name>``).
#
# Units as above: 1 = one forward pass of the trained model on one example; a backward pass that
# computes weight and activation gradients = 2; a backward pass for the input gradient only (the
# parameters need no gradient) = 1; backpropagating through an input gradient built with
# ``create_graph=True`` (double backprop) = 4: through the backward graph (gradients for its
# activations and its weights, 2) and then through the forward graph again (2). Each count below
# reads the authors' training code; per-epoch evaluations are not training and are not counted.

BOUNDS = ("exact", "lower bound", "upper bound")
#: the MMA repository's bisection search for the margin: num_search_steps = 10 forward passes
MMA_SEARCH_STEPS = 10
#: OA-AT's and DAJAT's AWP starts after this many epochs (awp_warmup = 10 in both repositories)
AWP_WARMUP_EPOCHS = 10


@dataclass(frozen=True)
class RecipeFacts:
    """What a recipe row says about one training run (None: unknown)."""

    dataset: str
    attack_steps: int | None = None
    awp: bool | None = None
    epochs: float | None = None
    examples_per_epoch: float | None = None

    @property
    def num_classes(self) -> int | None:
        from harness.data.registry import find
        d = find(self.dataset)
        return None if d is None else d.num_classes

    @property
    def examples_seen(self) -> float | None:
        if self.epochs is None or self.examples_per_epoch is None:
            return None
        return self.epochs * self.examples_per_epoch


@dataclass(frozen=True)
class MethodCost:
    """The cost of one example seen: ``multiplier`` forward passes of the trained model, plus
    ``extra_flops`` FLOPs (fvcore convention) of another network (``extra_what``)."""

    multiplier: float
    passes: str                 # what is counted, for the board
    bound: str = "exact"        # one of BOUNDS
    why: str = ""               # what a bound leaves out or counts in excess
    extra_flops: float = 0.0
    extra_what: str = ""

    def __post_init__(self):
        if self.bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {self.bound!r}")


def lbgat_teacher_flops(num_classes: int) -> float:
    """fvcore FLOPs of LBGAT's natural teacher, ``ResNet18_cifar`` of the LBGAT repository
    (``models/resnetcifar.py``) at 32x32: a CIFAR ResNet-18 whose second stage keeps stride 1, so
    its stages run at 32, 32, 16 and 8 pixels (average pool 8). Convolutions: the 3->64 stem
    1,769,472; stage 1 (four 64->64 3x3 convs at 32x32) 150,994,944; stages 2-4 536,870,912 each
    (3x3 convs, 1x1 shortcut); batch norm as fvcore counts it 2,949,120; the classifier 512 x C.
    ``tests/unit/compute/test_flops.py`` rebuilds the network and counts it with fvcore."""
    return 1_769_472 + 150_994_944 + 3 * 536_870_912 + 2_949_120 + 512 * num_classes


def _needs(f: RecipeFacts, *, steps: bool = False, awp_allowed: bool = False, epochs: bool = False,
           seen: bool = False, classes: bool = False, name: str = "") -> str | None:
    """The reason a derivation cannot be made from these facts, or None."""
    if f.awp is None:
        return "whether AWP was used is unknown"
    if f.awp and not awp_allowed:
        return f"harness.compute.training_cost derives no multiplier for {name} + AWP"
    if steps and (f.attack_steps is None or f.attack_steps < 1):
        return "the number of attack steps is unknown"
    if epochs and f.epochs is None:
        return "the epochs are unknown (the cost changes during training)"
    if seen and f.examples_seen is None:
        return "the examples seen are unknown"
    if classes and f.num_classes is None:
        return f"the number of classes of {f.dataset} is not known to harness.data.registry"
    return None


def _gradalign(f: RecipeFacts) -> MethodCost | str:
    # Andriushchenko & Flammarion 2020 (train.py): the FGSM step from a zero start (forward + input
    # gradient, 2) gives the gradient at x that GradAlign compares; the training loss on x + delta
    # (forward + backward, 3); the input gradient at a uniformly random point, with create_graph
    # (2), and backprop through it for the cosine term (4): 2 + 3 + 2 + 4 = 11.
    if (why := _needs(f, name="GradAlign")) is not None:
        return why
    return MethodCost(11.0, "FGSM (5) + GradAlign's second input gradient with double backprop (6)")


def _lbgat(f: RecipeFacts) -> MethodCost | str:
    # Cui et al. 2021 (lbgat.py, the repository's only training loss): each of the K attack steps
    # runs model(x_adv) and model(x_natural) for the KL term and the input gradient (1 + 1 + 1);
    # then model(x_adv) and model(x_natural) forward and backward (6; the KL term stays in the graph
    # even at beta = 0) and the natural teacher forward and backward on the clean batch
    # (3 teacher forwards): 3K + 6 forwards of the robust model + 3 of the teacher.
    if (why := _needs(f, steps=True, classes=True, name="LBGAT")) is not None:
        return why
    if f.dataset not in ("cifar10", "cifar100"):
        return "LBGAT's teacher is counted at 32x32 (CIFAR) only"
    k = f.attack_steps
    return MethodCost(3.0 * k + 6, f"LBGAT: {k} attack steps of 2 forwards + 1 input backward, clean and "
                                   "adversarial forward/backward (6)",
                      extra_flops=3 * lbgat_teacher_flops(f.num_classes),
                      extra_what="the natural ResNet-18 teacher's forward/backward (3 x its forward)")


def _hat(f: RecipeFacts) -> MethodCost | str:
    # Rade & Moosavi-Dezfooli 2022 (core/utils/hat.py, hat_loss): the clean forward for the KL
    # target (1), K attack steps (2K), then model(x), model(x_adv) and model(x_helper) forward and
    # backward (9): 2K + 10, plus the helper model's forward on x_adv for the helper labels and the
    # helper's own standard training, whose architecture these checkpoints do not state.
    if (why := _needs(f, steps=True, name="HAT")) is not None:
        return why
    k = f.attack_steps
    return MethodCost(2.0 * k + 10, f"TRADES-{k} ({2 * k + 7}) + the helper example's forward/backward (3)",
                      "lower bound", "excludes the helper model: its forward on each adversarial example "
                                     "and its own standard training (architecture not stated)")


def _gair_rst(f: RecipeFacts) -> MethodCost | str:
    # Zhang et al. 2021 (GAIR_RST/losses.py, GAIR_trades_loss, with run_training.sh's Lambda 3):
    # each of the K KL-attack steps runs model(x_adv) for kappa, model(x_adv) and model(x_natural)
    # for the KL and the input gradient (4); training forward/backward on x_adv and x_natural (6):
    # 4K + 6. From epoch E/2 on (lam(): Lambda <= 10) a CW attack is added: pgd_generate's clean
    # forward (1) and K steps of forward + loss.backward(), which computes weight gradients too
    # (3 each), and the CW examples' forward/backward in the loss (3): 7K + 10.
    if (why := _needs(f, steps=True, epochs=True, name="GAIR-RST")) is not None:
        return why
    k, e = f.attack_steps, f.epochs
    late = max(0.0, e - math.ceil(0.5 * e) + 1)  # epochs 1..E with epoch >= E/2
    mult = ((e - late) * (4 * k + 6) + late * (7 * k + 10)) / e
    return MethodCost(mult, f"GAIR-TRADES-{k}: {4 * k + 6} per example in the first half of the epochs, "
                            f"{7 * k + 10} with the CW attack in the second")


def _fat_trades(f: RecipeFacts) -> MethodCost | str:
    # Zhang et al. 2020 (FAT_for_TRADES.py, earlystop.py with loss_fn "kl"): the clean forward for
    # the KL target (1), kept in the graph; at most K steps of a forward (1) and
    # loss_adv.backward(retain_graph=True), which computes weight gradients through the adversarial
    # branch (2) and again through the clean branch (2); then forward/backward on the clean and the
    # adversarial batch (6): at most 5K + 7.
    if (why := _needs(f, steps=True, name="FAT")) is not None:
        return why
    k = f.attack_steps
    return MethodCost(5.0 * k + 7, f"early-stopped PGD-{k} at 5 per step + TRADES loss (7)", "upper bound",
                      "every example counted for all K attack steps; early stopping ends most attacks sooner")


def _mma(f: RecipeFacts) -> MethodCost | str:
    # Ding et al. 2020 (trainer.py, anpgd.py): clean forward and backward for the clean loss (3);
    # on correctly classified examples AN-PGD: K steps with input gradients only (2K), a forward at
    # the result (1) and the bisection search for the margin (MMA_SEARCH_STEPS forwards); the MMA
    # loss's forward and backward on the batch (3): 2K + 17 if every example is classified correctly.
    if (why := _needs(f, steps=True, name="MMA")) is not None:
        return why
    k = f.attack_steps
    return MethodCost(2.0 * k + 7 + MMA_SEARCH_STEPS, f"AN-PGD-{k} + {MMA_SEARCH_STEPS}-step margin search + "
                                                      "clean and MMA losses", "upper bound",
                      "counts the attack and the margin search on every example; the code runs them on the "
                      "correctly classified ones only")


def _feature_scatter(f: RecipeFacts) -> MethodCost | str:
    # Zhang & Wang 2019 (attack_methods.py, Attack_FeaScatter; fs_main.py): three clean forwards of
    # the copied network (3); each of the K steps: a forward at x (1), the OT loss's backward, which
    # computes weight gradients through both the perturbed and the clean branch (2 + 2), and a
    # forward of the training network at the new x (1); the training loss's backward (2): 6K + 5.
    if (why := _needs(f, steps=True, name="feature scattering")) is not None:
        return why
    k = f.attack_steps
    return MethodCost(6.0 * k + 5, f"feature scattering, {k} step(s): 3 clean forwards, 6 per step, backward (2)",
                      "lower bound", "excludes the Sinkhorn iterations on the batch's logits (a few million "
                                     "FLOPs per batch, negligible)")


def _dyart(f: RecipeFacts) -> MethodCost | str:
    # Xu et al. 2023 (core/DyART/DyART_Linf.py, FAB/FAB_scalar_boundary.py, restart_FAB 1): a forward
    # for the margin (1); FAB: a forward (1) and per iteration the margin's forward and input
    # gradient (2) and a forward at the new point (1), 3K; a forward at the result (1); the margin's
    # input gradient at the boundary point (2); the boundary loss's forward/backward (3) and the clean
    # loss's (3): 3K + 11 if FAB runs on, and succeeds for, every example.
    if (why := _needs(f, steps=True, name="DyART")) is not None:
        return why
    k = f.attack_steps
    return MethodCost(3.0 * k + 11, f"FAB-{k} boundary search (3 per iteration) + boundary and clean losses",
                      "upper bound", "counts FAB and the boundary loss on every example; the code runs them "
                                     "on correctly classified examples and keeps only good boundary points")


def _yopo(f: RecipeFacts) -> MethodCost | str:
    # Zhang et al. 2019 (YOPO-m-n): each batch runs m full forward and backward passes, whose weight
    # gradients are accumulated (3m); in each, n inner steps move the perturbation with the first
    # layer only. attack_steps holds m.
    if (why := _needs(f, steps=True, name="YOPO")) is not None:
        return why
    m = f.attack_steps
    return MethodCost(3.0 * m, f"YOPO-{m}: {m} full forward/backward passes", "lower bound",
                      "excludes the m x n first-layer steps (each about two passes through the first layer; "
                      "about 0.01% for a WRN-34-10)")


def _scheduled_trades_awp(f: RecipeFacts, early_steps: int | None) -> float:
    """Mean over the epochs of 2K_e + 6 + (6 once AWP starts): the CE attack, the clean and
    adversarial forward/backward, AWP's forward/backward of both; K_e = ``early_steps`` in the first
    quarter of the epochs (OA-AT), else the recipe's K."""
    k, e = f.attack_steps, int(round(f.epochs))
    total = 0.0
    for epoch in range(1, e + 1):
        k_e = early_steps if early_steps is not None and epoch <= e // 4 else k
        total += 2 * k_e + 6 + (6 if f.awp and epoch >= AWP_WARMUP_EPOCHS else 0)
    return total / e


def _oaat(f: RecipeFacts) -> MethodCost | str:
    # Addepalli et al. 2022 (OA-AT, train_OAAT.py): K = 5 attack steps in the first quarter of the
    # epochs, then 10 (the recipe's K); a CE attack (2K, input gradients only); the TRADES-style loss
    # runs model(x_adv) and model(x_natural) twice, all with backward (9, counted as 6); AWP
    # (TradesAWP, from epoch 10) at least another 6. In the last quarter the batches alternate
    # between a 10-step mixup attack and an LPIPS-regularised attack through an LPIPS copy of the
    # model (loss.backward(), extra passes), not counted.
    if (why := _needs(f, steps=True, epochs=True, awp_allowed=True, name="OA-AT")) is not None:
        return why
    return MethodCost(_scheduled_trades_awp(f, early_steps=5),
                      f"CE attack (5 steps in the first quarter, then {f.attack_steps}) + clean and adversarial "
                      "forward/backward" + (" + AWP from epoch 10" if f.awp else ""),
                      "lower bound", "excludes the second clean forward of the KL target and the last quarter's "
                                     "LPIPS-regularised attack passes")


def _dajat(f: RecipeFacts) -> MethodCost | str:
    # Addepalli et al. 2022 (DAJAT, train_DAJAT.py): each image is used as the base view and
    # num_auto = 2 AutoAugment views, each attacked (examples_per_epoch counts the views); per
    # view at least the K-step attack (2K), the clean and adversarial forward/backward of the
    # TRADES-style loss (6) and AWP's (6, from epoch 10); the JS term uses the same outputs.
    if (why := _needs(f, steps=True, epochs=True, awp_allowed=True, name="DAJAT")) is not None:
        return why
    return MethodCost(_scheduled_trades_awp(f, early_steps=None),
                      f"per view: {f.attack_steps}-step attack + clean and adversarial forward/backward"
                      + (" + AWP from epoch 10" if f.awp else ""),
                      "lower bound", "excludes any extra clean forward for the TRADES-style target")


def _crown_ibp_reported(f: RecipeFacts) -> MethodCost | str:
    # Zhang et al. 2020: the CROWN-IBP multiplier above, 3 (C + 2), counts the CROWN backward bound
    # pass in every step; the schedule lowers beta to 0 after the eps ramp-up, and from then on only
    # IBP (9) is computed.
    if (why := _needs(f, classes=True, name="CROWN-IBP")) is not None:
        return why
    return MethodCost(method_multiplier("crown-ibp", 0, f.num_classes), f"CROWN-IBP with C = {f.num_classes}",
                      "upper bound", "counts the CROWN pass in every step; once beta reaches 0 only IBP (9) runs")


def _backward_smoothing(f: RecipeFacts) -> MethodCost | str:
    # Chen et al. 2020 (BackwardSmoothing, trades_backward.py, training_loss): the clean forward for
    # the KL target (1, detached); the output-space smoothed initialisation, a forward at x and the
    # input gradient of its KL to the noisy target (2); K TRADES attack steps (2K); the clean and the
    # adversarial forward/backward of the TRADES loss (6): 2K + 9.
    if (why := _needs(f, steps=True, name="backward smoothing")) is not None:
        return why
    k = f.attack_steps
    return MethodCost(2.0 * k + 9, f"TRADES-{k} ({2 * k + 7}) + the smoothed initialisation's forward and "
                                   "input gradient (2)")


def _adv_interp(f: RecipeFacts) -> MethodCost | str:
    # Zhang & Xu 2020 (adv_interp, adv_interp.py and train_adv_interp.py): on a copy of the network,
    # the features of the randomly started x and of the batch's reversed images x' (2 forwards up to
    # the feature layer); loss_adv.backward(), whose weight gradients (the copy's parameters require
    # them) run through both branches (2 + 2); one signed step, hard-coded (num_steps is not used);
    # the soft cross-entropy's forward/backward on the interpolated batch (3): 9. The copy of the
    # network and the clean forward logged every log_step batches are monitoring, not counted.
    if (why := _needs(f, name="adversarial interpolation")) is not None:
        return why
    return MethodCost(9.0, "two feature forwards and their backward with weight gradients (6) + "
                           "forward/backward on the interpolated batch (3)", "upper bound",
                      "counts the two feature-only forwards as full forwards (the classifier layer is a "
                      "fraction of a percent of a WRN-28-10)")


def _awp_epochs(f: RecipeFacts) -> float:
    """How many of the recipe's epochs 1..E run AWP, which starts at epoch ``AWP_WARMUP_EPOCHS``
    (``if epoch >= args.awp_warmup``, default 10, in the AWP, DKL, OA-AT and DAJAT repositories)."""
    e = int(round(f.epochs))
    return float(max(0, e - AWP_WARMUP_EPOCHS + 1)) if f.awp else 0.0


def _ikl_at(f: RecipeFacts) -> MethodCost | str:
    # Cui et al. 2023 (IKL-AT, jiequancui/DKL@c5e8ad2 DKLv1/Adv-training-dkl/train_dkl_cifar10.py,
    # train_dkl_cifar100.py, utils_awp.py): each of the K attack steps runs model(x_natural) and
    # model(x_adv) (2) and an input gradient through the adversarial branch only (1): 3K; the
    # training loss runs model(x_adv) and model(x_natural) forward and backward (6); the class-wise
    # weights are a running mean of those outputs (no extra pass). AWP (TradesAWP.calc_awp, from
    # epoch 10) runs the proxy copy on the clean and the adversarial batch, forward and backward
    # through both (the DKL loss keeps the clean logits in the graph): +6. Per example: 3K + 6,
    # and 3K + 12 in the AWP epochs. K = 5, 200 epochs, AWP from epoch 10:
    # (9 x 21 + 191 x 27) / 200 = 26.73.
    if (why := _needs(f, steps=True, awp_allowed=True, name="IKL-AT")) is not None:
        return why
    if f.awp and f.epochs is None:
        return "the epochs are unknown (AWP starts at epoch 10, so the cost changes during training)"
    k = f.attack_steps
    base = 3.0 * k + 6
    if not f.awp:
        return MethodCost(base, f"IKL-AT-{k}: {k} attack steps of 2 forwards + 1 input backward, clean and "
                                "adversarial forward/backward (6)")
    mult = base + 6.0 * _awp_epochs(f) / int(round(f.epochs))
    return MethodCost(mult, f"IKL-AT-{k} ({base:g}: {k} attack steps of 2 forwards + 1 input backward, clean and "
                            f"adversarial forward/backward) + AWP's proxy forward/backward on both batches (6) "
                            f"from epoch {AWP_WARMUP_EPOCHS}")


def _rst_awp(f: RecipeFacts) -> MethodCost | str:
    # Wu et al. 2020 (RST-AWP): RST's TRADES loss with AWP. RST-AWP's own script is not released;
    # the count combines the two released pieces it names. RST (yaircarmon/semisup-adv@3f05b28
    # losses.py trades_loss): each of the K attack steps runs model(x_adv) and model(x_natural) (2)
    # and an input gradient (1): 3K; the loss runs model(x_adv) and model(x_natural) forward and
    # backward (6). AWP (csdongxian/AWP@a7acf5d trades_AWP/utils_awp.py TradesAWP.calc_awp): the
    # proxy runs on the clean batch twice (cross-entropy and the KL target, not detached) and on the
    # adversarial batch once, backward through all three: +9, from epoch awp_warmup = 10
    # (trades_AWP/train_trades_cifar.py). Per example 3K + 6, then 3K + 15; K = 10, 200 epochs:
    # (9 x 36 + 191 x 45) / 200 = 44.595.
    if (why := _needs(f, steps=True, awp_allowed=True, name="RST-AWP")) is not None:
        return why
    if f.awp and f.epochs is None:
        return "the epochs are unknown (AWP starts at epoch 10, so the cost changes during training)"
    k = f.attack_steps
    base = 3.0 * k + 6
    mult = base + (9.0 * _awp_epochs(f) / int(round(f.epochs)) if f.awp else 0.0)
    return MethodCost(mult, f"RST's TRADES-{k} ({base:g}: {k} attack steps of 2 forwards + 1 input backward, clean "
                            "and adversarial forward/backward)"
                      + (f" + TradesAWP's 3 proxy forwards and their backward (9) from epoch {AWP_WARMUP_EPOCHS}"
                         if f.awp else ""))


def _proxy_pgd(f: RecipeFacts) -> MethodCost | str:
    # Sehwag et al. 2022 (inspire-group/proxy-distributions@3f6db1b utils.py trainfxn,
    # get_adversarial_loss, pgd_attack): every batch first runs logits = model(images) for the
    # accuracy meters (1; the PGD loss does not use it, so no backward); K PGD steps of a forward and
    # an input gradient (2K); the adversarial batch's forward and backward (3): 2K + 4. A batch is a
    # real batch and a synthetic batch of the same size (combine_dataloaders), so examples_per_epoch
    # counts both.
    if (why := _needs(f, steps=True, name="PGD (proxy data)")) is not None:
        return why
    k = f.attack_steps
    return MethodCost(2.0 * k + 4, f"PGD-{k} ({2 * k + 3}) + the clean forward of the accuracy meters (1)")


def _meansparse(f: RecipeFacts) -> MethodCost | str:
    # Amini et al. 2024 (SPIN-UMass/MeanSparse@52e6c03): post-training of a frozen base, whose own
    # training the recipe's base_models column adds. MeanSparse trains no weights: one forward pass
    # over the training images for the per-channel mean and variance (calculate_statistics), then a
    # threshold search evaluated with APGD-CE on a few batches. The recipe's epochs x
    # examples_per_epoch are that statistics pass.
    if (why := _needs(f, seen=True, awp_allowed=False, name="MeanSparse")) is not None:
        return why
    return MethodCost(1.0, "one forward pass per training image for MeanSparse's statistics", "lower bound",
                      "excludes MeanSparse's threshold search (APGD-CE on a few batches)")


def _mixednuts(f: RecipeFacts) -> MethodCost | str:
    # Bai et al. 2024 (Bai-YT/MixedNUTS@d22270b README: 'MixedNUTS is a training-free method'):
    # no weights are trained; the base models' training is added through base_models.
    return MethodCost(0.0, "training-free (no weights trained)", "lower bound",
                      "excludes the search of the four mixing hyper-parameters (s, p, c, alpha), which "
                      "evaluates the mixed model")


#: ``other:<name>`` -> its derivation from the recipe's facts (a MethodCost, or why there is none)
OTHER_METHODS: dict[str, Callable[[RecipeFacts], MethodCost | str]] = {
    "gradalign": _gradalign,
    "lbgat": _lbgat,
    "hat": _hat,
    "gair-rst": _gair_rst,
    "fat-trades": _fat_trades,
    "mma": _mma,
    "feature-scatter": _feature_scatter,
    "dyart": _dyart,
    "yopo": _yopo,
    "meansparse": _meansparse,
    "mixednuts": _mixednuts,
    "ikl-at": _ikl_at,
    "rst-awp": _rst_awp,
    "proxy-pgd": _proxy_pgd,
    "oaat": _oaat,
    "oa-at": _oaat,
    "dajat": _dajat,
    "crown-ibp": _crown_ibp_reported,
    "backward-smoothing": _backward_smoothing,
    "adv-interp": _adv_interp,
}

#: ``other:<name>`` methods with no derivation, and why
UNDERIVED: dict[str, str] = {
    "las-at": "a strategy network picks each example's attack steps, and which LAS-AT variant (PGD-AT, TRADES "
              "or AWP) made the checkpoint is not identified",
    "adaptive-smoothing": "the mixing network's training runs a randomized APGD attack through the two-model "
                          "ensemble, whose passes per example were not counted from the code",
    "sodef": "the frozen base's epochs are unverified and the ODE block's FLOPs are not known",
    "levelset": "the level-set projection's passes per batch were not counted from the code",
    "jarn": "the discriminator's architecture is not known, and the Jacobian's double backprop runs only in "
            "part of the training",
    "cure": "fine-tuning of a standard model whose pre-training is not in the recipe",
    "lat": "fine-tuning of the Madry et al. model (its pre-training must be added) with a latent attack whose "
           "step count is not known",
    "pcl-pgd": "three training stages of different cost, and which stage's checkpoint RobustBench uses is not "
               "confirmed",
    "tla": "the schedule of the released model is not determined",
    "war-rst": "no training code is released",
    # the rows below name a method whose training code is not public (or not found): what a
    # derivation would need is in each row's note
    "uat": "no training code is released: the attack, its steps and the unlabelled data's share of "
           "each batch are not known",
    "clustr": "no code located: whether, and with how many attack steps, the model was adversarially "
              "trained is not known",
    "ltd": "no training recipe is released: the base objective, its attack steps and the teacher's "
           "training are not known",
    "data-filtering": "the training code (LessIsMore) is not available: the filtered subset, the base "
                      "objective and its attack steps are not known",
    "learned-attacker": "no code located: the attack generator's architecture and unroll steps are not known",
    "manifold-reg": "no code located: the regulariser's passes per example are not known",
    "sensible-at": "no code located: the attack steps and when the attack stops are not known",
    "dnr": "only test code is released: the adversarial training's attack steps and the pruning "
           "schedule are not known",
    "llr": "no public code: the inner maximisation's gradient steps per example are not known",
    "ates": "only evaluation code is released: the attack steps and the early-stopping curriculum "
            "are not known",
    "bilateral-at": "no code located: the attack steps of the released model are not confirmed",
}


def reported_method_cost(method: str, facts: RecipeFacts) -> MethodCost | str:
    """The cost per example seen of a recipe's ``method`` (a base method, a loss-only variant of one,
    or ``other:<name>`` with a derivation above), or the reason there is none."""
    name = method[len("other:"):].split(" (")[0].strip() if method.startswith("other:") else method
    if method == "unknown":
        return "the training method is unknown"
    base = method if method in ("standard", *STEP_METHODS, "fgsm", "ibp", "crown-ibp") else SAME_PASSES_AS.get(name)
    if base is not None:
        if facts.awp is None:
            return "whether AWP was used is unknown"
        if base in STEP_METHODS and (facts.attack_steps is None or facts.attack_steps < 1):
            return "the number of attack steps is unknown"
        if base == "crown-ibp" and facts.num_classes is None:
            return f"the number of classes of {facts.dataset} is not known to harness.data.registry"
        mult = method_multiplier(base, facts.attack_steps or 0, facts.num_classes or 0, bool(facts.awp))
        if mult is None:
            return f"harness.compute.training_cost derives no multiplier for {name}" + (" + AWP" if facts.awp else "")
        label = describe_method(base, facts.attack_steps, bool(facts.awp))
        return MethodCost(mult, label if base == method else f"the passes of {label}")
    derive = OTHER_METHODS.get(name)
    if derive is not None:
        return derive(facts)
    return (f"harness.compute.training_cost derives no multiplier for {name}"
            + (f" ({UNDERIVED[name]})" if name in UNDERIVED else ""))


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
