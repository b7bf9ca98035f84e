"""What a result was computed with: package versions, device, threads, time."""
from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata

import torch

PACKAGES = ("torch", "torchvision", "pyautoattack", "robustbench", "fvcore", "numpy", "scipy", "pydantic")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def python_version() -> str:
    return sys.version.split()[0]
