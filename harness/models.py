"""Loading a submission's model safely, and wrapping it so that every stage sees one interface.

The only place in the harness that reads checkpoints:
- ``state_dict``: safetensors, or ``torch.load(..., weights_only=True)``, which refuses any pickle
  that would build arbitrary objects or run code;
- ``torchscript``: ``torch.jit.load`` (TorchScript archives hold TorchScript code and tensors, no
  Python pickles of arbitrary objects);
- ``onnx``: ``onnx.load`` and onnx2torch, which gives a torch.fx GraphModule.

The result is a :class:`LoadedModel`: an ``nn.Module`` in eval mode that takes NCHW float inputs in
[0, 1] with the submission's normalisation inside it (so attacks and bounds work in pixel space).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import HarnessError
from .files import sha256_file
from .submission import LoadedSubmission, verify_files


class NormalizedModel(nn.Module):
    """``model((x - mean) / std)``: normalisation as sub/div by constant buffers (bounds handle it)."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], channels: int):
        super().__init__()
        if len(mean) == 1:
            mean, std = mean * channels, std * channels
        if len(mean) != channels:
            raise HarnessError(
                f"preprocessing has {len(mean)} values but the data have {channels} channels",
                field="model.preprocessing",
            )
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


@dataclass
class LoadedModel:
    module: nn.Module
    device: torch.device
    input_shape: tuple[int, int, int]
    num_classes: int
    checkpoint_sha256: str
    format: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        out = []
        for i in range(0, x.shape[0], batch_size):
            out.append(self.module(x[i : i + batch_size].to(self.device)).argmax(1).cpu())
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise HarnessError("--device cuda was asked for, but torch sees no CUDA device")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise HarnessError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Accept the common nestings ({'state_dict': ...}, {'model': ...}) and DataParallel prefixes."""
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HarnessError("checkpoint is not a state_dict (a mapping of names to tensors)",
                           field="model.checkpoint")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise HarnessError(f"cannot read safetensors checkpoint: {e}", field="model.checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HarnessError(
            "checkpoint refused: it is a pickle that needs arbitrary Python objects or code "
            f"(loaded with weights_only=True; nothing in it ran). Save a plain state_dict or safetensors. [{first[:160]}]",
            field="model.checkpoint",
        )
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise HarnessError(f"cannot read checkpoint: {str(e).splitlines()[0][:200]}", field="model.checkpoint")
    return _unwrap_state_dict(obj)


def _build_state_dict_model(sub: LoadedSubmission, path: Path) -> nn.Module:
    from .architectures import build_architecture

    spec = sub.spec.model
    net = build_architecture(spec.architecture or "", spec.architecture_kwargs)
    state = read_state_dict(path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise HarnessError(f"checkpoint does not fit architecture {spec.architecture}: {msg[:300]}",
                           field="model.checkpoint")
    return net


def _build_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError and friends for bad archives
        raise HarnessError(f"cannot load TorchScript archive: {str(e).splitlines()[0][:200]}",
                           field="model.checkpoint")


def _build_onnx(path: Path) -> nn.Module:
    import onnx
    from onnx2torch import convert

    try:
        proto = onnx.load(str(path))
        return convert(proto)
    except Exception as e:
        raise HarnessError(f"cannot convert ONNX model: {str(e).splitlines()[0][:200]}", field="model.checkpoint")


def load_model(sub: LoadedSubmission, *, input_shape: tuple[int, int, int], num_classes: int,
               device: torch.device) -> LoadedModel:
    """Verify the checkpoint's SHA-256, load it safely, wrap it, and check its outputs."""
    verify_files(sub)  # every file of the folder (ONNX external data too) matches its hash: harness.manifest
    path = sub.checkpoint_path()
    if not path.is_file():
        raise HarnessError(f"file not found: {path}", field="model.checkpoint.path")
    digest = sha256_file(path)
    if digest != sub.spec.model.checkpoint.sha256:
        raise HarnessError(
            f"checkpoint hash mismatch: file has {digest}, submission says {sub.spec.model.checkpoint.sha256}",
            field="model.checkpoint.sha256",
        )
    fmt = sub.spec.model.format
    if fmt == "state_dict":
        net = _build_state_dict_model(sub, path)
    elif fmt == "torchscript":
        net = _build_torchscript(path)
    else:
        net = _build_onnx(path)
    pre = sub.spec.model.preprocessing
    module = NormalizedModel(net, pre.mean, pre.std, channels=input_shape[0]).to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    loaded = LoadedModel(module, device, input_shape, num_classes, digest, fmt)
    check_outputs(loaded)
    return loaded


@torch.no_grad()
def check_outputs(model: LoadedModel) -> None:
    """A model must give finite logits of shape (N, num_classes) on inputs in [0, 1]."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, *model.input_shape), generator=gen).to(model.device)
    try:
        out = model.module(x)
    except Exception as e:
        raise HarnessError(f"model fails on an input of shape {tuple(x.shape)}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200] if str(e) else ''}")
    if not isinstance(out, torch.Tensor) or out.shape != (2, model.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise HarnessError(f"model output has shape {shape}, expected (N, {model.num_classes})")
    if not torch.isfinite(out).all():
        raise HarnessError("model returned NaN or infinite logits")
