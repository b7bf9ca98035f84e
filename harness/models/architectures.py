"""Built-in architectures (small models trained by ``scripts/train_mnist.py``) and the
RobustBench model-zoo architectures, built without downloading any weights.

Every builder returns an ``nn.Module`` that maps *normalised* inputs to logits; the harness's
wrapper (:class:`harness.models.load.NormalizedModel`) puts the submission's mean/std in front.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from harness.core import plugins
from harness.core.errors import HarnessError, one_line


def mnist_mlp(num_classes: int = 10, hidden: int = 100) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def mnist_small_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """The 'small' CNN of Wong & Kolter (2018) and CROWN-IBP (Zhang et al. 2020)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def cifar_small_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def _robustbench_class(name: str) -> Callable[..., nn.Module]:
    from robustbench.model_zoo.architectures import resnet, wide_resnet

    from harness.models import compat  # noqa: F401  (alias autoattack before robustbench imports it)

    classes = {
        "ResNet18": resnet.ResNet18,
        "ResNet34": resnet.ResNet34,
        "ResNet50": resnet.ResNet50,
        "PreActResNet18": resnet.PreActResNet18,
        "WideResNet": wide_resnet.WideResNet,
    }
    return classes[name]


BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "mnist_mlp": mnist_mlp,
    "mnist_small_cnn": mnist_small_cnn,
    "cifar_small_cnn": cifar_small_cnn,
}
ROBUSTBENCH_CLASSES = ("ResNet18", "ResNet34", "ResNet50", "PreActResNet18", "WideResNet")


def register(name: str, builder: Callable[..., nn.Module], *, replace: bool = False) -> None:
    """Add an architecture ``builder(num_classes=..., **architecture_kwargs) -> nn.Module`` (plug-ins:
    entry-point group ``robust_frontier.architectures``, :mod:`harness.core.plugins`; tests)."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("robustbench"):
        raise ValueError(f"architecture names are Python identifiers not starting with 'robustbench', got {name!r}")
    if name in BUILTIN and not replace:
        raise ValueError(f"architecture {name!r} is already registered")
    BUILTIN[name] = builder


def known_architectures() -> list[str]:
    plugins.load("architectures")
    return sorted(BUILTIN) + [f"robustbench.{c}" for c in ROBUSTBENCH_CLASSES] + [
        "robustbench.zoo:<dataset>/<threat_model>/<model_name>"
    ]


def build_architecture(name: str, kwargs: dict[str, Any] | None = None, *,
                       max_bytes: int | None = None) -> nn.Module:
    """Build an architecture by name, with random weights.

    - ``mnist_small_cnn`` etc.: the harness's own (see :data:`BUILTIN`);
    - ``robustbench.ResNet18``, ``robustbench.WideResNet`` (kwargs ``depth``, ``widen_factor``):
      RobustBench's architecture classes;
    - ``robustbench.zoo:cifar10/Linf/Carmon2019Unlabeled``: the architecture of a model-zoo entry,
      built by the zoo's own constructor (which never downloads: only ``load_model`` does).

    With ``max_bytes``, an architecture whose parameters and buffers would take more is refused
    before anything is allocated (the worker passes its memory limit).
    """
    kwargs = dict(kwargs or {})
    if name.startswith("robustbench.zoo:"):
        return _build_zoo(name.split(":", 1)[1], kwargs)
    plugins.load("architectures")
    if name in BUILTIN:
        builder = BUILTIN[name]
    elif name.startswith("robustbench.") and name.split(".", 1)[1] in ROBUSTBENCH_CLASSES:
        builder = _robustbench_class(name.split(".", 1)[1])
    else:
        raise HarnessError(
            f"unknown architecture {name[:200]!r}; known: {', '.join(known_architectures())}",
            field="model.architecture",
        )
    for key, limit in DEPTH_LIMITS.items():
        v = kwargs.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > limit:
            raise HarnessError(f"{key} must be at most {limit}, got {v}", field=f"model.architecture_kwargs.{key}")
    if kwargs or max_bytes is not None:
        # the submission chose the sizes: count the parameters on the meta device (no memory) first,
        # so that `hidden: 1000000` is refused instead of allocating terabytes
        n, size = _meta_size(builder, name, kwargs)
        if n > MAX_PARAMETERS:
            raise HarnessError(f"{name} with these arguments has {n:.3g} parameters, more than the limit of "
                               f"{MAX_PARAMETERS:.0e}", field="model.architecture_kwargs")
        if max_bytes is not None and size > max_bytes:
            raise HarnessError(
                f"{name} with these arguments has {n:.3g} parameters ({size / 2**30:.3g} GiB), over the limit of "
                f"{max_bytes / 2**30:.3g} GiB; refused before allocating anything", field="model.architecture_kwargs")
    return _call(builder, name, kwargs)


#: arguments that set the number of layers: bounded, since even a meta-device build takes time per layer
DEPTH_LIMITS = {"depth": 1000}
#: the largest model a submission's ``architecture_kwargs`` may ask for (a WRN-94-16 has 3.7e8)
MAX_PARAMETERS = 2_000_000_000


def _call(builder: Callable[..., nn.Module], name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return builder(**kwargs)
    except HarnessError:
        raise
    except Exception as e:  # TypeError (unknown argument), RuntimeError (negative size), ValueError, ...
        msg = one_line(e, 200)
        raise HarnessError(f"bad architecture_kwargs for {name!r}: {type(e).__name__}: {msg}",
                           field="model.architecture_kwargs")


def _meta_size(builder: Callable[..., nn.Module], name: str, kwargs: dict[str, Any]) -> tuple[int, int]:
    """(parameters + buffers, their bytes) of the architecture, built on the meta device (no memory)."""
    import torch

    with torch.device("meta"):
        net = _call(builder, name, kwargs)
    tensors = list(net.parameters()) + list(net.buffers())
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


def _build_zoo(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    from harness.models import compat  # noqa: F401

    parts = spec.split("/")
    if len(parts) != 3:
        raise HarnessError(
            f"robustbench.zoo architecture must be 'robustbench.zoo:<dataset>/<threat_model>/<name>', got {spec!r}",
            field="model.architecture",
        )
    dataset, threat, model_name = parts
    try:
        entries = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
        entry = entries[model_name]
    except (ValueError, KeyError):
        raise HarnessError(f"no RobustBench model-zoo entry {spec!r}", field="model.architecture")
    if kwargs:
        raise HarnessError("architecture_kwargs are not allowed with robustbench.zoo entries",
                           field="model.architecture_kwargs")
    return entry["model"]()
