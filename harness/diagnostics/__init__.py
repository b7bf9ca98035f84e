"""Trust diagnostics: is a robust-accuracy figure believable?

- :mod:`.attacks`: a hand-written FGSM / PGD ladder, the transparent reference AutoAttack is
  compared with;
- :mod:`.probes`: measurements on the model (randomized forward pass, zero input gradients) and
  the AutoAttack version they call for;
- :mod:`.rules`: the flag rules that turn measurements into :class:`~harness.record.Flag` objects
  (``weak-attack-gap``, ``catastrophic-overfitting``, ``randomized-model``, ``randomized-defense``,
  ``autoattack-not-rand``, ``zero-gradients``);
- :mod:`.aa_messages`: the one capture of AutoAttack's own check messages, and their parsing into
  ``aa-*`` flags;
- :mod:`.linearity`: gradient alignment and input-Hessian curvature (Lanczos on finite-difference
  Hessian-vector products);
- :mod:`.lipschitz`: the empirical local Lipschitz constant of Yang et al. (2020);
- :mod:`.separation`: the exact test-to-train separation of a data set (Yang et al. 2020).
"""
from __future__ import annotations

from harness.record.schema import Flag

from .aa_messages import AutoAttackCapture, capture_autoattack_messages, classify_autoattack_messages
from .attacks import attack_ladder, fgsm, pgd, robust_flags
from .linearity import fd_step_for, gradient_alignment, input_hessian_top_eigenvalue, lanczos
from .lipschitz import lipschitz_report, local_lipschitz
from .probes import autoattack_version_for, detect_randomized, zero_gradient_fraction
from .rules import (
    catastrophic_overfitting_flag,
    gap_threshold,
    ladder_flags,
    randomized_evaluation_flag,
    randomized_model_flag,
    weak_attack_gap_flags,
    zero_gradient_flag,
)
from .separation import min_distance_to_other_class, separation_report

__all__ = [
    "fgsm", "pgd", "robust_flags", "attack_ladder",
    "Flag", "gap_threshold", "weak_attack_gap_flags", "catastrophic_overfitting_flag",
    "ladder_flags", "classify_autoattack_messages", "capture_autoattack_messages",
    "AutoAttackCapture", "detect_randomized", "randomized_model_flag", "randomized_evaluation_flag",
    "autoattack_version_for",
    "zero_gradient_fraction", "zero_gradient_flag",
    "gradient_alignment", "lanczos", "input_hessian_top_eigenvalue", "fd_step_for",
    "local_lipschitz", "lipschitz_report",
    "min_distance_to_other_class", "separation_report",
]
