#!/usr/bin/env python
"""Train the example MNIST submissions (``submissions/mnist-*``), deterministically, on CPU.

Every model is the harness's ``mnist_small_cnn`` on inputs x/255 in [0, 1] (NCHW, no
normalisation). Five training methods, all for the Linf threat model at eps 0.3:

- ``standard``: plain cross-entropy (broken by any attack at 0.3);
- ``pgd``:      PGD adversarial training (Madry et al. 2018): PGD-10, random start, step 2.5*eps/10,
                eps ramped up over the first epoch;
- ``fgsm``:     "fast is better than free" RS-FGSM (Wong et al. 2020): uniform random start in the
                ball, one signed-gradient step of 1.25*eps;
- ``fgsm-co``:  FGSM pushed into *catastrophic overfitting* on purpose: Goodfellow et al. (2015)
                FGSM training (zero start, step = train eps, loss 0.5*CE(clean) + 0.5*CE(FGSM)) at a
                larger training eps (``--train-eps 0.5``), no ramp. FGSM accuracy at 0.3 stays high,
                PGD accuracy collapses to ~0;
- ``ibp``:      interval-bound-propagation certified training (Gowal et al. 2018): eps and kappa
                ramps, loss kappa*CE(clean) + (1-kappa)*CE(worst-case IBP margin logits), with the
                differentiable IBP of the harness's own bound library (``harness.bounds``).

Usage::

    python scripts/train_mnist.py --method pgd --eps 0.3 --epochs 8 --seed 0 --out submissions/mnist-pgd
    python scripts/train_mnist.py --all            # all five, with their committed settings
    python scripts/train_mnist.py --all --check    # ... and report clean / FGSM / PGD-20 (/ IBP) accuracy
    python scripts/train_mnist.py --check-only --method pgd --out submissions/mnist-pgd  # evaluate only

Each run writes ``<out>/model.safetensors`` (``model.state_dict()``) and ``<out>/submission.yaml``
(with the checkpoint's SHA-256 and the exact command that reproduces it).

Determinism: the model initialisation, the shuffling and every random start come from ``--seed``
(``torch.manual_seed`` plus explicit ``torch.Generator`` objects); ``torch.use_deterministic_algorithms``
is on and the thread count is fixed (``--threads``, default 1: on a shared CPU two threads were up
to 20x slower). Re-running a command on the same
machine reproduces the checkpoint bit for bit; a different CPU (other SIMD kernels) or thread count may
change the last bits of the floats, hence the SHA-256.

``--check`` is a quick sanity evaluation on the first 1000 test images (clean, FGSM and PGD-20 at the
evaluation eps, plus IBP-certified accuracy); the leaderboard's numbers come from the harness.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from harness.core.errors import one_line  # noqa: E402
from harness.models.architectures import mnist_small_cnn  # noqa: E402

#: the MNIST training set is not shipped (9.8 MB): the maintainers keep it in ../shared/data/ beside
#: the checkout; anyone else passes --train-data (an .npz of uint8 x (60000, 28, 28) and y (60000,))
DEFAULT_TRAIN = (REPO / ".." / "shared" / "data" / "mnist_train.npz").resolve()
TRAIN_SHA256 = "11bf48d67d8e90b9d940549ce9565b4921ad2ec150e4491e0c670aeb165169a9"
#: the test set ships with the harness (identical to ../shared/data/mnist_test.npz)
DEFAULT_TEST = REPO / "harness" / "data" / "mnist_test.npz"
METHODS = ("standard", "pgd", "fgsm", "fgsm-co", "ibp")


# --------------------------------------------------------------------------- settings
@dataclass
class Config:
    """The committed settings of one method; ``--epochs``/``--train-eps``/``--lr`` override them."""

    id: str
    name: str
    notes: str
    epochs: int
    lr: float = 1e-3
    batch_size: int = 128
    train_eps: float | None = None  # None: the evaluation eps
    attack_steps: int = 0  # recorded in submission.yaml (training.attack_steps)
    ramp_epochs: float = 0.0  # eps ramps linearly from 0 over this many epochs (after warmup)
    warmup_epochs: float = 0.0  # epochs of clean training before the ramp (ibp)
    lr_decay_at: tuple[float, ...] = ()  # fractions of the run after which the lr is multiplied by 0.1
    kappa_end: float = 0.5  # ibp: final weight of the clean loss
    clean_weight: float = 0.0  # adversarial methods: loss = w*CE(clean) + (1-w)*CE(adversarial)
    # evaluation.certify in submission.yaml: full CROWN costs ~0.75 s per example on 2 CPU cores for
    # the adversarially trained models (most ReLUs unstable at eps 0.3), so only the certifiably
    # trained model, whose bounds are tight, asks for it by default; run it on a GPU for the others.
    certify: tuple[str, ...] = ("ibp", "crown-ibp")
    extra: dict = field(default_factory=dict)


CONFIGS: dict[str, Config] = {
    "standard": Config(
        id="mnist-standard",
        name="Small CNN, standard training (no defence)",
        notes="Undefended baseline: high clean accuracy, broken by any attack at Linf 0.3.",
        epochs=2,
    ),
    "pgd": Config(
        id="mnist-pgd",
        name="Small CNN, PGD-10 adversarial training (Linf 0.3)",
        notes="Madry-style PGD-10 adversarial training at eps 0.3 (random start, step 2.5*eps/10, "
              "eps ramp over the first epoch): the empirically robust reference.",
        epochs=8,
        attack_steps=10,
        ramp_epochs=1.0,
        lr_decay_at=(0.75,),
    ),
    "fgsm": Config(
        id="mnist-fgsm",
        name="Small CNN, RS-FGSM adversarial training (Linf 0.3)",
        notes="'Fast is better than free' RS-FGSM at eps 0.3 (uniform random start, step 1.25*eps, "
              "eps ramp over the first epoch), stopped at 8 epochs: cheap single-step training that stays "
              "fairly robust to PGD (the same recipe run for 15 epochs overfits catastrophically at "
              "epoch ~9).",
        epochs=8,
        attack_steps=1,
        ramp_epochs=1.0,
        lr_decay_at=(0.75,),
    ),
    "fgsm-co": Config(
        id="mnist-fgsm-co",
        name="Small CNN, FGSM training with catastrophic overfitting (Linf 0.3)",
        notes="Deliberately broken: Goodfellow-style FGSM training (zero start, step = eps, loss "
              "0.5*CE(clean) + 0.5*CE(FGSM)) at train eps 0.5 overfits catastrophically: FGSM accuracy "
              "at 0.3 climbs high while PGD accuracy is ~0 from the first epoch on (gradient masking).",
        epochs=8,
        train_eps=0.5,
        attack_steps=1,
        clean_weight=0.5,
    ),
    "ibp": Config(
        id="mnist-ibp",
        name="Small CNN, IBP certified training (Linf 0.3, train eps 0.4)",
        notes="IBP certified training (Gowal et al. 2018) at train eps 0.4 with eps/kappa ramps; "
              "the verifiably robust reference for bound-based certification.",
        epochs=30,
        lr=1e-3,
        batch_size=100,
        train_eps=0.4,
        certify=("ibp", "crown-ibp", "crown"),
        attack_steps=0,
        warmup_epochs=1.0,
        ramp_epochs=10.0,
        lr_decay_at=(0.75, 0.9),
    ),
}


# --------------------------------------------------------------------------- data
class DataError(Exception):
    """A missing or unreadable data file: printed as one line, without a traceback."""


def load_mnist(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``x`` (N, 28, 28) and labels ``y`` (N,) of an .npz, as floats in [0, 1] (N, 1, 28, 28)."""
    try:
        with np.load(path, allow_pickle=False) as d:
            xs, ys = d["x"], d["y"]
    except (OSError, ValueError, KeyError, EOFError) as e:
        why = "no such file" if isinstance(e, FileNotFoundError) else " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise DataError(f"{path}: {why}")
    if xs.dtype != np.uint8 or xs.ndim != 3 or xs.shape[1:] != (28, 28) or ys.shape != (xs.shape[0],):
        raise DataError(f"{path}: not MNIST: x must be uint8 (N, 28, 28) and y (N,), got x {xs.dtype} {xs.shape} "
                        f"and y {ys.shape}")
    x = torch.from_numpy(xs).float().div(255).unsqueeze(1).contiguous()
    y = torch.from_numpy(ys.astype(np.int64))
    return x, y


def training_data_path(given: str | None) -> Path:
    """The training set: ``--train-data``, else the maintainers' copy beside the checkout; one line
    saying which file to pass when neither is there."""
    path = Path(given).expanduser().resolve() if given else DEFAULT_TRAIN
    if not path.is_file():
        if given:
            raise DataError(f"--train-data {given}: no such file")
        raise DataError(f"the MNIST training set is not in this checkout: pass --train-data FILE, an .npz of uint8 x "
                        f"(60000, 28, 28) and y (60000,) (the maintainers' copy is ../shared/data/mnist_train.npz "
                        f"beside the checkout, 9.8 MB, sha256 {TRAIN_SHA256})")
    return path


# --------------------------------------------------------------------------- attacks
def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (g,) = torch.autograd.grad(loss, x)
    return g


def fgsm(model, x, y, eps, step=None, random_start=False, gen=None):
    """One signed-gradient step (from zero, or from a uniform random start), projected to the ball
    and to [0, 1]."""
    step = eps if step is None else step
    if random_start:
        delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    else:
        delta = torch.zeros_like(x)
    x0 = (x + delta).clamp(0, 1)
    g = _input_grad(model, x0, y)
    delta = (x0 - x + step * g.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def pgd(model, x, y, eps, steps, step=None, random_start=True, gen=None):
    """Linf PGD on the cross-entropy loss (Madry et al.), projected to the ball and to [0, 1]."""
    step = 2.5 * eps / steps if step is None else step
    if random_start:
        xa = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    else:
        xa = x.clone()
    for _ in range(steps):
        g = _input_grad(model, xa, y)
        xa = torch.min(torch.max(xa + step * g.sign(), x - eps), x + eps).clamp(0, 1).detach()
    return xa


# --------------------------------------------------------------------------- IBP
# Training uses the harness's own bound library (harness.bounds, differentiable IBP), i.e. the
# certified accuracy on the leaderboard is computed by the very bounds the model was trained on.
# ``ibp_bounds`` below is a minimal, independent re-implementation for nn.Sequential models, used
# only by ``--check`` to cross-check the library (the two must agree to float rounding).
def margin_spec(y: torch.Tensor, k: int = 10) -> torch.Tensor:
    """C of shape (B, K-1, K) with rows e_y - e_j for every j != y (margin of the true class)."""
    eye = torch.eye(k, dtype=torch.float32)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (B, K, K): row j = e_y - e_j
    keep = ~eye.bool()[y]  # drop j == y
    return c[keep].view(y.shape[0], k - 1, k)


def ibp_bounds(model: nn.Sequential, x: torch.Tensor, eps: float, C: torch.Tensor | None = None):
    """Interval bounds on model(x') (or on C @ model(x')) over the box ||x'-x||_inf <= eps ∩ [0,1].
    The spec C is folded into the last linear layer (tighter than bounding the logits first)."""
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    layers = list(model)
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        if isinstance(layer, nn.Linear):
            w, b = layer.weight, layer.bias
            if last and C is not None:
                w = C @ w  # (B, K-1, in)
                b = C @ b  # (B, K-1)
                mid = torch.einsum("bkn,bn->bk", w, mid) + b
                rad = torch.einsum("bkn,bn->bk", w.abs(), rad)
                return mid - rad, mid + rad
            mid = F.linear(mid, w, b)
            rad = F.linear(rad, w.abs())
        elif isinstance(layer, nn.Conv2d):
            mid = layer(mid)
            rad = F.conv2d(rad, layer.weight.abs(), None, layer.stride, layer.padding,
                           layer.dilation, layer.groups)
        elif isinstance(layer, nn.ReLU):
            lo, hi = F.relu(mid - rad), F.relu(mid + rad)
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
        elif isinstance(layer, nn.Flatten):
            mid, rad = layer(mid), layer(rad)
        else:
            raise TypeError(f"ibp_bounds: unsupported layer {type(layer).__name__}")
    lb, ub = mid - rad, mid + rad
    if C is not None:
        cp, cn = C.clamp(min=0), C.clamp(max=0)
        return (torch.einsum("bkn,bn->bk", cp, lb) + torch.einsum("bkn,bn->bk", cn, ub),
                torch.einsum("bkn,bn->bk", cp, ub) + torch.einsum("bkn,bn->bk", cn, lb))
    return lb, ub


def worst_case_logits(margin_lb: torch.Tensor) -> torch.Tensor:
    """Gowal et al.'s worst-case logits from the margin lower bounds lb(z_y - z_j), j != y:
    z_j = -lb_j and z_y = 0 (the true class is put in column 0, so its CE target is 0)."""
    return torch.cat([torch.zeros(margin_lb.shape[0], 1), -margin_lb], dim=1)


# --------------------------------------------------------------------------- training
def ramp(progress_epochs: float, start: float, length: float) -> float:
    """0 before ``start``, 1 after ``start + length``, linear in between."""
    if length <= 0:
        return 1.0 if progress_epochs >= start else 0.0
    return float(min(1.0, max(0.0, (progress_epochs - start) / length)))


def train(method: str, cfg: Config, x: torch.Tensor, y: torch.Tensor, eps: float, epochs: int,
          seed: int, monitor=None) -> nn.Module:
    """``monitor(model) -> str``, if given, is printed after every epoch (it must not touch the
    training RNG: ``--check`` passes a test-set FGSM/PGD probe with its own generator)."""
    torch.manual_seed(seed)
    model = mnist_small_cnn()
    gen = torch.Generator().manual_seed(seed)  # shuffling and random starts
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if method == "ibp":
        from harness.bounds import BoundedModel

        bounded = BoundedModel(model, input_shape=(1, 28, 28))  # follows the live parameters
    n, bs = x.shape[0], cfg.batch_size
    batches = (n + bs - 1) // bs
    train_eps = cfg.train_eps if cfg.train_eps is not None else eps
    print(f"[{method}] {epochs} epochs, {n} examples, batch {bs}, lr {cfg.lr}, train eps {train_eps}",
          flush=True)
    t_start, c_start = time.time(), time.process_time()
    for epoch in range(epochs):
        if epoch in [round(f * epochs) for f in cfg.lr_decay_at]:
            for group in opt.param_groups:
                group["lr"] *= 0.1
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot_loss, tot_correct, tot_robust, t0 = 0.0, 0, 0, time.time()
        for b in range(batches):
            idx = perm[b * bs:(b + 1) * bs]
            xb, yb = x[idx], y[idx]
            progress = epoch + b / batches
            r = ramp(progress, cfg.warmup_epochs, cfg.ramp_epochs)
            e = train_eps * r
            if method == "standard":
                out = model(xb)
                loss = F.cross_entropy(out, yb)
            elif method in ("pgd", "fgsm", "fgsm-co"):
                if e > 0:
                    if method == "pgd":
                        xa = pgd(model, xb, yb, e, cfg.attack_steps, gen=gen)
                    elif method == "fgsm":
                        xa = fgsm(model, xb, yb, e, step=1.25 * e, random_start=True, gen=gen)
                    else:
                        xa = fgsm(model, xb, yb, e, step=e, random_start=False)
                else:
                    xa = xb
                out = model(xa)
                loss = F.cross_entropy(out, yb)
                if cfg.clean_weight > 0:
                    loss = (1 - cfg.clean_weight) * loss + cfg.clean_weight * F.cross_entropy(model(xb), yb)
            elif method == "ibp":
                kappa = 1.0 - (1.0 - cfg.kappa_end) * r
                out = model(xb)
                loss = kappa * F.cross_entropy(out, yb)
                if e > 0:
                    lb, _ = bounded.bounds(xb, e, norm="Linf", method="ibp", C=margin_spec(yb))
                    worst = worst_case_logits(lb)
                    loss = loss + (1 - kappa) * F.cross_entropy(worst, torch.zeros_like(yb))
                    tot_robust += int((worst[:, 1:] < 0).all(dim=1).sum())
            else:
                raise ValueError(method)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += loss.item() * len(idx)
            tot_correct += int((out.argmax(1) == yb).sum())
        msg = (f"[{method}] epoch {epoch + 1}/{epochs}  "
               + (f"eps {e:.3f}  " if method != "standard" else "")
               + f"loss {tot_loss / n:.4f}  "
               f"train acc ({'clean' if method in ('standard', 'ibp') else 'adv'}) {tot_correct / n:.4f}")
        if method == "ibp":
            msg += f"  kappa {kappa:.2f}  ibp-verified (train, at eps {e:.3f}) {tot_robust / n:.4f}"
        print(f"{msg}  lr {opt.param_groups[0]['lr']:.1e}  {time.time() - t0:.1f}s", flush=True)
        if monitor is not None:
            t_m, c_m = time.time(), time.process_time()
            model.eval()
            print(f"[{method}]   {monitor(model)}", flush=True)
            t_start += time.time() - t_m  # the probe is not training time
            c_start += time.process_time() - c_m
    train_s = time.time() - t_start
    print(f"[{method}] trained in {train_s:.1f}s wall, "
          f"{time.process_time() - c_start:.1f}s CPU (all threads)", flush=True)
    return model.eval(), train_s


# --------------------------------------------------------------------------- evaluation (--check)
def check(model: nn.Module, test_path: Path, eps: float, seed: int, n: int = 1000, bs: int = 500,
          certify: bool = True) -> dict:
    """Clean, FGSM (zero start, step eps) and PGD-20 (random start, step 2.5*eps/20) accuracy at eps
    on the first ``n`` test images, plus IBP-certified accuracy from the harness's bound library
    (cross-checked against this script's independent IBP). Robust/certified counts only correctly
    classified examples."""
    from harness.bounds import BoundedModel

    model.eval()
    bounded = BoundedModel(model, input_shape=(1, 28, 28))
    x, y = load_mnist(test_path)
    x, y = x[:n], y[:n]
    gen = torch.Generator().manual_seed(seed)
    res = {"clean": 0, "fgsm": 0, "pgd20": 0}
    if certify:
        res["ibp"] = 0
    for i in range(0, n, bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        with torch.no_grad():
            clean_ok = model(xb).argmax(1) == yb
        res["clean"] += int(clean_ok.sum())
        xa = fgsm(model, xb, yb, eps)
        with torch.no_grad():
            res["fgsm"] += int(((model(xa).argmax(1) == yb) & clean_ok).sum())
        xa = pgd(model, xb, yb, eps, 20, gen=gen)
        with torch.no_grad():
            res["pgd20"] += int(((model(xa).argmax(1) == yb) & clean_ok).sum())
            if not certify:
                continue
            C = margin_spec(yb)
            lb, _ = bounded.bounds(xb, eps, norm="Linf", method="ibp", C=C)
            lb_own, _ = ibp_bounds(model, xb, eps, C)
            gap = float((lb - lb_own).abs().max())
            if gap > 1e-3 * (1 + float(lb.abs().max())):
                raise RuntimeError(f"harness.bounds IBP and the script's IBP disagree by {gap}")
            res["ibp"] += int(((lb > 0).all(1) & clean_ok).sum())
    return {k: v / n for k, v in res.items()}


# --------------------------------------------------------------------------- submission files
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def command_line(method: str, eps: float, epochs: int, seed: int, out: str, cfg: Config,
                 overrides: dict) -> str:
    parts = ["python", "scripts/train_mnist.py", "--method", method, "--eps", f"{eps:g}"]
    if cfg.train_eps is not None or "train_eps" in overrides:
        parts += ["--train-eps", f"{overrides.get('train_eps', cfg.train_eps):g}"]
    for key in ("lr", "clean_weight", "ramp_epochs"):
        if key in overrides:
            parts += ["--" + key.replace("_", "-"), f"{overrides[key]:g}"]
    parts += ["--epochs", str(epochs), "--seed", str(seed), "--out", out]
    if "limit" in overrides:
        parts += ["--limit", str(overrides["limit"])]
    return " ".join(shlex.quote(p) for p in parts)


def write_submission(out: Path, model: nn.Module, method: str, cfg: Config, eps: float, epochs: int,
                     seed: int, command: str, n_train: int) -> str:
    import yaml
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "model.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    digest = sha256(ckpt)
    sub = {
        "id": out.name,
        "name": cfg.name,
        "authors": ["robust-frontier maintainers"],
        "license": "MIT",
        "dataset": "mnist",
        "threat_model": {"norm": "Linf", "eps": eps},
        "model": {
            "format": "state_dict",
            "architecture": "mnist_small_cnn",
            "checkpoint": {"path": "model.safetensors", "sha256": digest},
            "preprocessing": {"mean": [0.0], "std": [1.0]},
            "forward_passes": 1,
        },
        "training": {
            "method": "fgsm" if method == "fgsm-co" else method,
            "attack_steps": cfg.attack_steps,
            "epochs": epochs,
            "examples_per_epoch": n_train,
            "extra_data": 0,
            "command": command,
            "seed": seed,
        },
        "evaluation": {"n_examples": 500, "seed": 0, "batch_size": 500, "certify": list(cfg.certify)},
        "notes": cfg.notes,
    }
    text = _to_yaml(sub)
    assert yaml.safe_load(text) == sub, "submission.yaml does not round-trip"
    (out / "submission.yaml").write_text(text)
    return digest


def _to_yaml(d: dict, indent: int = 0) -> str:
    """Block mappings at the top two levels, flow style for small leaf mappings and lists: the
    layout of the documented schema. Strings are JSON-quoted (valid YAML double-quoted scalars)."""
    import json
    import re

    import yaml

    def scalar(v):
        if isinstance(v, str):
            plain = re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", v) and yaml.safe_load(v) == v
            return v if plain else json.dumps(v)
        if isinstance(v, bool) or v is None:
            return json.dumps(v)
        return repr(v) if isinstance(v, float) else str(v)

    def flow(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {flow(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(flow(x) for x in v) + "]"
        return scalar(v)

    lines = []
    for k, v in d.items():
        pad = " " * indent
        if isinstance(v, dict) and indent == 0 and k not in ("threat_model",):
            lines.append(f"{pad}{k}:")
            lines.append(_to_yaml(v, indent + 2).rstrip("\n"))
        else:
            lines.append(f"{pad}{k}: {flow(v)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--all", action="store_true", help="train all five with their committed settings")
    p.add_argument("--eps", type=float, default=0.3, help="evaluation (threat-model) eps, Linf")
    p.add_argument("--train-eps", type=float, default=None, help="training eps (default: per method)")
    p.add_argument("--epochs", type=int, default=None, help="default: per method")
    p.add_argument("--lr", type=float, default=None, help="default: per method")
    p.add_argument("--clean-weight", type=float, default=None,
                   help="weight of the clean CE term for pgd/fgsm/fgsm-co (default: per method)")
    p.add_argument("--ramp-epochs", type=float, default=None,
                   help="epochs over which the training eps ramps up from 0 (default: per method)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="submission folder (default submissions/<id>)")
    p.add_argument("--train-data", default=None,
                   help="the MNIST training set, an .npz of uint8 x (60000, 28, 28) and y (60000,) "
                   "(default: ../shared/data/mnist_train.npz beside the checkout, where the maintainers keep it)")
    p.add_argument("--test-data", default=str(DEFAULT_TEST),
                   help="for --check (default: the test set bundled in harness/data/)")
    p.add_argument("--check", action="store_true",
                   help="after training, print clean/FGSM/PGD-20/IBP accuracy on the first 1000 test images")
    p.add_argument("--check-only", action="store_true", help="evaluate the checkpoint in --out, no training")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: fastest on a shared CPU; the count changes the float rounding)")
    p.add_argument("--limit", type=int, default=None,
                   help="smoke test: train on the first N examples only (never for committed models)")
    args = p.parse_args(argv)
    if args.all == (args.method is not None):
        p.error("give exactly one of --method or --all")
    if args.all and (args.out or args.epochs or args.train_eps is not None or args.lr
                     or args.clean_weight is not None or args.ramp_epochs is not None):
        p.error("--all uses the committed settings; --out/--epochs and the overrides go with --method")

    try:
        # before the chdir below: a relative path names a file of the folder the script was started in
        train_path = None if args.check_only else training_data_path(args.train_data)
        test_path = Path(args.test_data).expanduser().resolve()
        if (args.check or args.check_only) and not test_path.is_file():
            raise DataError(f"--test-data {args.test_data}: no such file")
        return _run(args, train_path, test_path)
    except DataError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, train_path: Path | None, test_path: Path) -> int:
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    os.chdir(REPO)  # --out and the recorded commands are relative to the repo root

    methods = list(METHODS) if args.all else [args.method]
    x = y = None
    summary = []
    for method in methods:
        cfg = CONFIGS[method]
        overrides = {}
        if args.train_eps is not None:
            overrides["train_eps"] = args.train_eps
            cfg = Config(**{**cfg.__dict__, "train_eps": args.train_eps})
        # (the committed settings are the CONFIGS above; these overrides are for experiments and
        # are written into the recorded command whenever they are given)
        for key in ("lr", "clean_weight", "ramp_epochs"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
                cfg = Config(**{**cfg.__dict__, key: getattr(args, key)})
        epochs = args.epochs if args.epochs is not None else cfg.epochs
        out = args.out or f"submissions/{cfg.id}"
        out = os.path.relpath(os.path.abspath(out), REPO) if os.path.isabs(out) else os.path.normpath(out)
        if args.check_only:
            from safetensors.torch import load_file
            model = mnist_small_cnn()
            model.load_state_dict(load_file(str(Path(out) / "model.safetensors")))
            elapsed = float("nan")
        else:
            if x is None:
                assert train_path is not None
                x, y = load_mnist(train_path)
                if args.limit:
                    x, y = x[:args.limit], y[:args.limit]
            monitor = None
            if args.check and method != "standard":
                def monitor(m, _t=test_path, method=method):
                    r = check(m, _t, args.eps, args.seed, n=500, bs=500, certify=method == "ibp")
                    return "probe, first 500 test images at eps %g: " % args.eps + "  ".join(
                        f"{k} {v:.3f}" for k, v in r.items())
            model, elapsed = train(method, cfg, x, y, args.eps, epochs, args.seed, monitor)
            if args.limit:
                overrides["limit"] = args.limit
            cmd = command_line(method, args.eps, epochs, args.seed, out, cfg, overrides)
            digest = write_submission(Path(out), model, method, cfg, args.eps, epochs, args.seed, cmd,
                                      x.shape[0])
            print(f"[{method}] wrote {out}/model.safetensors (sha256 {digest}) and submission.yaml", flush=True)
        row = {"method": method, "out": out, "train_s": elapsed}
        if args.check or args.check_only:
            t0 = time.time()
            row.update(check(model, test_path, args.eps, args.seed))
            print(f"[{method}] check at eps {args.eps} on 1000 test images: "
                  + "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k not in ("method", "out", "train_s"))
                  + f"  ({time.time() - t0:.1f}s)", flush=True)
        summary.append(row)
    if len(summary) > 1:
        print("\nsummary")
        for row in summary:
            print("  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
