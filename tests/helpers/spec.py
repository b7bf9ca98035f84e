"""The repository root and the smallest valid submission spec, for tests."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def base_spec(sub_id: str, sha: str, **over) -> dict:
    spec = {
        "id": sub_id,
        "name": "test model",
        "authors": ["tester"],
        "license": "MIT",
        "dataset": "mnist",
        "threat_model": {"norm": "Linf", "eps": 0.3},
        "model": {
            "format": "state_dict",
            "architecture": "mnist_small_cnn",
            "checkpoint": {"path": "model.pt", "sha256": sha},
        },
        "training": {"method": "standard", "epochs": 1},
        "evaluation": {"n_examples": 20, "batch_size": 20, "seed": 0},
    }
    for k, v in over.items():
        spec[k] = v
    return spec
