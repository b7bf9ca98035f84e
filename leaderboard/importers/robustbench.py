"""RobustBench's leaderboard entries → ``leaderboard/reported.csv``: the reported rows.

Two sources give the same rows:

- a RobustBench checkout's ``model_info/<dataset>/<threat model>/<id>.json`` files (what
  ``harness leaderboard import-robustbench PATH`` reads, so maintainers can refresh when RobustBench
  grows), and
- the 188-row snapshot table of those files (``robustbench_model_info.csv``, RobustBench commit
  78fcc9e), the default source of ``scripts/reported_compute.py``.

Only the ε-ball threat models (``Linf``, ``L2``) are read; ``corruptions`` and the like are not
adversarial boards. Text from RobustBench (titles, venues, footnotes) may carry HTML and LaTeX
(``GitHub,<br>Oct 2019``, ``\\(\\ell_{\\infty} \\)``, ``<a href=...>``): :func:`plain_text` turns it into
plain text here, and every renderer escapes it again.

Parameters and inference FLOPs are counted by :func:`count_compute` with fvcore on each entry's
RobustBench model-zoo architecture, built without weights and without network access, at the
dataset's real input size (ImageNet: each model's own resolution, from RobustBench's preprocessing).
Counts already in the current ``reported.csv`` are reused, so a refresh counts only new rows.
A row whose architecture cannot be built is kept, with its compute empty and the reason in
``compute_source``; the board shows it, off the compute frontiers.
"""
from __future__ import annotations

import contextlib
import csv
import html
import json
import math
import re
import socket
import sys
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from harness.core.errors import HarnessError
from harness.data import registry

ROBUSTBENCH_COMMIT = "78fcc9e"
THREAT_MODELS = ("Linf", "L2")
DATASETS = ("cifar10", "cifar100", "imagenet")
#: test points RobustBench evaluates on: the full CIFAR test sets, 5,000 ImageNet validation images
N_TEST = {d: registry.get(d).n_test for d in DATASETS}
CONVENTION = "fvcore: 1 FLOP = 1 multiply-add"

#: the columns of reported.csv, in order (leaderboard.boards reads them)
COLUMNS = [
    "id", "dataset", "norm", "eps", "robustbench_id", "name", "architecture",
    "clean_acc_percent", "autoattack_acc_percent", "stronger_attack_acc_percent", "reported_acc_percent",
    "n_test", "params", "inference_flops", "forward_passes", "input_size", "training_flops",
    "flops_convention", "compute_source", "training_flops_source", "additional_data", "extra_data",
    "unreliable", "venue", "year", "paper", "authors", "source_url", "accuracy_source_url", "note",
]

# the snapshot's column -> the JSON file's key
SNAPSHOT_KEYS = {
    "clean_acc": "clean_acc", "autoattack_acc": "autoattack_acc", "external_acc": "external",
    "reported_acc": "reported", "architecture": "architecture", "additional_data": "additional_data",
    "number_forward_passes": "number_forward_passes", "unreliable": "unreliable", "venue": "venue",
    "paper": "name", "link": "link", "footnote": "footnote", "eps": "eps",
}


# ---------------------------------------------------------------------------------------------
class _Text(HTMLParser):
    """HTML → text: tags dropped, a link's target kept after its text, <br> as a space."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._href: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        if tag == "br":
            self.out.append(" ")
        elif tag == "a":
            self._href.append(dict(attrs).get("href"))

    def handle_endtag(self, tag):
        if tag == "a" and self._href:
            href = self._href.pop()
            if href and re.match(r"https?://", href):
                self.out.append(f" ({href})")

    def handle_data(self, data):
        self.out.append(data)


LATEX = [(r"\\\(\s*\\ell_\{?\\infty\}?\s*\\\)", "ℓ∞"), (r"\\\(\s*\\ell_\{?2\}?\s*\\\)", "ℓ2"),
         (r"\\infty", "∞"), (r"\\approx", "≈")]


def plain_text(text: Any) -> str:
    """RobustBench's text fields as plain text: no HTML tags, no LaTeX, single spaces."""
    s = "" if text is None else str(text)
    for pat, rep in LATEX:
        s = re.sub(pat, rep, s)
    p = _Text()
    p.feed(s)
    p.close()
    s = "".join(p.out)
    return re.sub(r"\s+", " ", html.unescape(s)).strip()


def year_of(venue: str) -> str:
    m = re.findall(r"(?<!\d)(19\d\d|20\d\d)(?!\d)", venue)
    return m[-1] if m else ""


def extra_data_text(additional_data: bool, footnote: str) -> str:
    """RobustBench's flag (extra *real* data) and, from its footnote, how many generated images."""
    parts = []
    if additional_data:
        parts.append("extra real data")
    m = re.search(r"(~?\s*[\d.]+\s*[MK])\s+synthetic images", footnote)
    if m:
        parts.append(f"{m.group(1).replace(' ', '')} generated images")
    return "; ".join(parts)


def _bool(v: Any, where: str, key: str) -> bool | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise HarnessError(f"{where}: {key} must be true or false, got {v!r}")


def _acc(v: Any, where: str, key: str, *, required: bool) -> str:
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise HarnessError(f"{where}: {key} is missing")
        return ""
    try:
        x = float(str(v).strip())
    except ValueError:
        raise HarnessError(f"{where}: {key} is not a number: {v!r}")
    if not math.isfinite(x) or not 0 <= x <= 100:
        raise HarnessError(f"{where}: {key} must be a percentage in [0, 100], got {v!r}")
    return str(v).strip()


@dataclass
class InfoRow:
    """One RobustBench leaderboard entry, as its model_info JSON file has it."""
    dataset: str
    norm: str
    robustbench_id: str
    info: dict[str, Any]
    where: str


def _check_id(rb_id: str, where: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}", rb_id):
        raise HarnessError(f"{where}: not a RobustBench model name: {rb_id!r}")
    return rb_id


def read_model_info_dir(path: Path) -> list[InfoRow]:
    """``model_info/<dataset>/<Linf|L2>/<id>.json`` under ``path`` (a checkout or its model_info)."""
    path = Path(path)
    base = path / "model_info" if (path / "model_info").is_dir() else path
    if not base.is_dir():
        raise HarnessError(f"{path}: not a folder with RobustBench's model_info/")
    rows = []
    for ds in DATASETS:
        for tm in THREAT_MODELS:
            folder = base / ds / tm
            if not folder.is_dir():
                continue
            for f in sorted(folder.glob("*.json")):
                if f.is_symlink() or not f.is_file():
                    raise HarnessError(f"{f}: not a plain file")
                if f.stat().st_size > 1_000_000:
                    raise HarnessError(f"{f}: larger than 1 MB, not a model_info file")
                try:
                    data = json.loads(f.read_text(encoding="utf-8"),
                                      object_pairs_hook=_no_duplicates(str(f)))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise HarnessError(f"{f}: not valid JSON: {e}")
                if not isinstance(data, dict):
                    raise HarnessError(f"{f}: expected a JSON object")
                rows.append(InfoRow(ds, tm, _check_id(f.stem, str(f)), data, str(f)))
    if not rows:
        raise HarnessError(f"{base}: no model_info/<dataset>/<Linf|L2>/*.json files")
    return rows


def _no_duplicates(where: str) -> Callable:
    def hook(pairs):
        keys = [k for k, _ in pairs]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise HarnessError(f"{where}: duplicate key {dup[0]!r}")
        return dict(pairs)
    return hook


def read_snapshot(path: Path) -> list[InfoRow]:
    """The snapshot table (``robustbench_model_info.csv``): one row per model_info file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            need = {"dataset", "threat_model", "robustbench_id", *SNAPSHOT_KEYS}
            missing = sorted(need - set(reader.fieldnames or []))
            if missing:
                raise HarnessError(f"{path}: missing columns {', '.join(missing)}")
            raw = list(reader)
    except OSError as e:
        raise HarnessError(f"{path}: cannot read: {e}")
    rows = []
    for line, r in enumerate(raw, start=2):
        where = f"{path}:{line}"
        info = {json_key: r[col] for col, json_key in SNAPSHOT_KEYS.items() if r[col] != ""}
        if r["threat_model"] not in THREAT_MODELS:
            continue
        rows.append(InfoRow(r["dataset"], r["threat_model"], _check_id(r["robustbench_id"], where), info, where))
    return rows


def read_source(path: Path) -> list[InfoRow]:
    path = Path(path)
    if path.is_file():
        return read_snapshot(path)
    return read_model_info_dir(path)


# ---------------------------------------------------------------------------------------------
def row_id(dataset: str, norm: str, rb_id: str) -> str:
    return f"reported-{dataset}-{norm}-{rb_id}"


def base_row(r: InfoRow) -> dict[str, str]:
    """The accuracy and paper columns of one reported row (compute columns empty)."""
    info, where = r.info, r.where
    if r.dataset not in N_TEST:
        raise HarnessError(f"{where}: unknown dataset {r.dataset!r}")
    eps = str(info.get("eps") or "").strip()
    if not eps:
        raise HarnessError(f"{where}: eps is missing")
    from harness.submission.schema import parse_eps
    try:
        parse_eps(eps)
    except ValueError as e:
        raise HarnessError(f"{where}: eps: {e}")
    footnote = plain_text(info.get("footnote"))
    additional = _bool(info.get("additional_data"), where, "additional_data")
    unreliable = _bool(info.get("unreliable"), where, "unreliable")
    venue = plain_text(info.get("venue"))
    passes = info.get("number_forward_passes", 1)
    try:
        passes = int(passes)
        if passes < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise HarnessError(f"{where}: number_forward_passes must be a positive integer, got {passes!r}")
    link = str(info.get("link") or "").strip()
    if link and not re.match(r"https?://", link):
        link = ""  # only http(s) links are kept (and rendered)
    return {
        "id": row_id(r.dataset, r.norm, r.robustbench_id),
        "dataset": r.dataset,
        "norm": r.norm,
        "eps": eps,
        "robustbench_id": r.robustbench_id,
        "name": r.robustbench_id,
        "architecture": plain_text(info.get("architecture")),
        "clean_acc_percent": _acc(info.get("clean_acc"), where, "clean_acc", required=False),
        "autoattack_acc_percent": _acc(info.get("autoattack_acc"), where, "autoattack_acc", required=True),
        "stronger_attack_acc_percent": _acc(info.get("external"), where, "external", required=False),
        "reported_acc_percent": _acc(info.get("reported"), where, "reported", required=False),
        "n_test": str(N_TEST[r.dataset]),
        "params": "", "inference_flops": "", "forward_passes": str(passes), "input_size": "",
        "training_flops": "", "flops_convention": CONVENTION, "compute_source": "", "training_flops_source": "",
        "additional_data": "" if additional is None else str(additional),
        "extra_data": extra_data_text(bool(additional), footnote),
        "unreliable": "" if unreliable is None else str(unreliable),
        "venue": venue,
        "year": year_of(venue),
        "paper": plain_text(info.get("name")),
        "authors": plain_text(info.get("authors")),
        "source_url": link,
        "accuracy_source_url": (f"https://github.com/RobustBench/robustbench/blob/{ROBUSTBENCH_COMMIT}/"
                                f"model_info/{r.dataset}/{r.norm}/{r.robustbench_id}.json"),
        "note": footnote,
    }


# ---------------------------------------------------------------------------------------------
# Counting: fvcore on the model-zoo architecture, without weights and without the network.

@dataclass
class Compute:
    params: int | None
    flops: float | None
    input_size: tuple[int, int, int] | None
    source: str  # what was counted, or why nothing was


@contextlib.contextmanager
def offline_cpu_build() -> Iterator[None]:
    """Build zoo architectures here, on a CPU, without the network.

    - Any connection attempt raises (a constructor that asks for pretrained weights fails loudly
      instead of downloading them).
    - ``Tensor.cuda()`` returns the tensor: robustbench's BiT ResNet (in the Bai et al. composite
      models) moves its normalisation constants to the GPU in ``__init__``; on a CPU that raises
      although the layers, hence the FLOPs, are the same.
    """
    import torch

    real_connect, real_create = socket.socket.connect, socket.create_connection
    real_cuda = torch.Tensor.cuda

    def refuse(*_a, **_k):
        raise OSError("network access is disabled while building architectures")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.create_connection = real_create  # type: ignore[assignment]
        torch.Tensor.cuda = real_cuda  # type: ignore[method-assign]


def _xcit(dataset: str, size: str) -> Callable[[], Any]:
    """robustbench 1.1.1's zoo asks timm for ``debenedetti2020light_xcit_<s|m|l>_<dataset>_linf``
    (with ``pretrained=True``), but its own ``architectures/xcit.py`` registers the models as
    ``debenedetti2022light_xcit_<s|m|l>12_<dataset>_linf``: a naming mismatch inside robustbench
    (timm 1.0.9 is the version it pins), not a timm version problem. We build the registered
    architecture, without weights."""
    def build():
        import timm
        from robustbench.model_zoo.architectures import xcit  # noqa: F401  (registers the models)
        return timm.create_model(f"debenedetti2022light_xcit_{size}12_{dataset}_linf", pretrained=False)
    return build


def _standard_r50():
    """The zoo's Standard_R50 asks torchvision for ImageNet weights; the architecture is the same
    without them."""
    from robustbench.model_zoo.architectures.utils_architectures import normalize_model
    from torchvision.models import resnet50
    return normalize_model(resnet50(weights=None), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


#: zoo entries whose own constructor cannot run offline, built another way (see each builder)
ZOO_OVERRIDES: dict[tuple[str, str, str], Callable[[], Any]] = {
    **{(ds, "Linf", f"Debenedetti2022Light_XCiT-{s.upper()}12"): _xcit(ds, s)
       for ds in DATASETS for s in ("s", "m", "l")},
    ("imagenet", "Linf", "Standard_R50"): _standard_r50,
}


def _crown_ibp_dm_large():
    """Zhang et al. (ICLR 2020)'s CIFAR-10 CROWN-IBP model, RobustBench's "5-layer-CNN" (no zoo
    weights): the "dm-large" structure of Gowal et al. (2018) that the authors' README says their
    best CIFAR model uses, ``IBP_large(in_ch=3, in_dim=32, linear_size=512)`` of
    huanzhang12/CROWN-IBP@6894321 model_defs_gowal.py, named by config/cifar_dm-large_8_255.json:
    five 3x3 convolutions (64, 64, 128 with stride 2, 128, 128; padding 1, ReLU), then linear
    16*16*128 -> 512 -> 10. Written out from that description (the repository is not a package)."""
    import torch.nn as nn

    convs = [(3, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1)]
    layers: list[nn.Module] = []
    for cin, cout, stride in convs:
        layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU()]
    layers += [nn.Flatten(), nn.Linear(16 * 16 * 128, 512), nn.ReLU(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


#: entries without zoo weights whose exact architecture the authors' code names: (builder, source)
NAMED_ARCHITECTURES: dict[tuple[str, str, str], tuple[Callable[[], Any], str]] = {
    ("cifar10", "Linf", "Zhang2020Towards"): (
        _crown_ibp_dm_large,
        "CROWN-IBP's dm-large CNN, IBP_large(3, 32, 512) (huanzhang12/CROWN-IBP@6894321 model_defs_gowal.py and "
        "config/cifar_dm-large_8_255.json; no model-zoo entry)"),
}


#: what is known about entries whose count fails, beyond the exception
WHY_NOT_COUNTED = {
    ("cifar10", "Linf", "Kang2021Stable"): (
        "its neural-ODE block is integrated by torchdiffeq's adaptive solver, whose number of steps depends on "
        "the input, so one traced forward would not give a fixed count anyway"),
}


def cifar_resnet(depth: int, num_classes: int):
    """He et al. (2016)'s CIFAR ResNet-n (n = 6k + 2: 20, 32, 110): 3 stages of k basic blocks
    with 16, 32, 64 channels. Written out here because neither robustbench nor torchvision (nor
    timm) ships this variant; the shortcut is option A (parameter-free), as in the paper."""
    import torch.nn as nn
    import torch.nn.functional as F

    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6k + 2, got {depth}")
    k = (depth - 2) // 6

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.pad = cout - cin
            self.stride = stride

        def forward(self, x):
            out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
            sc = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
            if self.pad:
                sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            return F.relu(out + sc)

    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for i, c in enumerate((16, 32, 64)):
        for j in range(k):
            layers.append(Block(cin, c, 2 if (i > 0 and j == 0) else 1))
            cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def architecture_builder(dataset: str, norm: str, rb_id: str, architecture: str) -> tuple[Callable[[], Any], str]:
    """How to build an entry's architecture: its model-zoo constructor, or (for leaderboard
    entries without zoo weights) the standard architecture its ``architecture`` string names.
    Raises ValueError with the reason when neither is possible."""
    if (dataset, norm, rb_id) in NAMED_ARCHITECTURES:
        return NAMED_ARCHITECTURES[(dataset, norm, rb_id)]
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    from harness.models import compat  # noqa: F401  (robustbench imports autoattack)

    key = (dataset, norm, rb_id)
    if key in ZOO_OVERRIDES:
        return ZOO_OVERRIDES[key], f"robustbench.zoo:{dataset}/{norm}/{rb_id} (see ZOO_OVERRIDES)"
    try:
        entry = model_dicts[BenchmarkDataset(dataset)][ThreatModel(norm)][rb_id]
        return entry["model"], f"robustbench.zoo:{dataset}/{norm}/{rb_id}"
    except (KeyError, ValueError):
        pass
    classes = registry.get(dataset).num_classes if dataset in ("cifar10", "cifar100") else None
    arch = architecture.strip()
    if classes is None:
        raise ValueError(f"no model-zoo entry, and no rule to build {arch!r} for {dataset}")
    m = re.fullmatch(r"WideResNet-(\d+)-(\d+)", arch)
    if m:
        from robustbench.model_zoo.architectures.wide_resnet import WideResNet
        d, w = int(m.group(1)), int(m.group(2))
        return (lambda: WideResNet(depth=d, widen_factor=w, num_classes=classes),
                f"robustbench WideResNet(depth={d}, widen_factor={w}) named by the entry's architecture "
                "(no model-zoo entry)")
    if arch == "ResNet-18":
        from robustbench.model_zoo.architectures.resnet import BasicBlock, ResNet
        return (lambda: ResNet(BasicBlock, [2, 2, 2, 2], num_classes=classes),
                "robustbench ResNet-18 (CIFAR variant) named by the entry's architecture (no model-zoo entry)")
    m = re.fullmatch(r"ResNet-(\d+)", arch)
    if m and (int(m.group(1)) - 2) % 6 == 0 and int(m.group(1)) not in (50, 152):
        d = int(m.group(1))
        return (lambda: cifar_resnet(d, classes),
                f"He et al.'s CIFAR ResNet-{d} named by the entry's architecture (no model-zoo entry)")
    raise ValueError(f"no model-zoo entry (RobustBench lists the result without weights), and "
                     f"'{arch}' does not name one standard architecture that could be counted instead")


def input_size(dataset: str, norm: str, rb_id: str) -> tuple[int, int, int]:
    """The input the model sees: 32x32 on CIFAR; on ImageNet the crop of RobustBench's own
    preprocessing for this model (224, or 288 for Wong2020Fast), read from its transform."""
    if dataset in ("cifar10", "cifar100"):
        return (3, 32, 32)
    from robustbench.data import get_preprocessing
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from torchvision import transforms

    from harness.models import compat  # noqa: F401

    try:
        t = get_preprocessing(BenchmarkDataset(dataset), ThreatModel(norm), rb_id, None)
    except KeyError:
        raise ValueError(f"RobustBench has no preprocessing for {dataset}/{norm}/{rb_id}")
    crops = [s for s in getattr(t, "transforms", []) if isinstance(s, transforms.CenterCrop)]
    resizes = [s for s in getattr(t, "transforms", []) if isinstance(s, transforms.Resize)]
    if crops:
        h, w = crops[-1].size
    elif resizes and isinstance(resizes[-1].size, (list, tuple)) and len(resizes[-1].size) == 2:
        h, w = resizes[-1].size
    else:
        raise ValueError(f"cannot read the input resolution from RobustBench's preprocessing {t}")
    return (3, int(h), int(w))


SKIPPED_PREFIX = "; operators fvcore does not count: "


def count_compute(dataset: str, norm: str, rb_id: str, architecture: str, forward_passes: int) -> Compute:
    """fvcore's count of one entry (the whole module: an ensemble's members are all in it)."""
    import torch

    from harness.compute.flops import count_inference_flops

    try:
        build, what = architecture_builder(dataset, norm, rb_id, architecture)
        size = input_size(dataset, norm, rb_id)
    except ValueError as e:
        return Compute(None, None, None, f"not counted: {e}")
    torch.manual_seed(0)
    try:
        with offline_cpu_build():
            model = build()
        with torch.no_grad():
            fc = count_inference_flops(model, size)
    except Exception as e:  # noqa: BLE001  (third-party constructors raise anything; keep the reason)
        msg = str(e).splitlines()[0][:200] if str(e) else e.__class__.__name__
        why = f"not counted: building or tracing {what} failed ({e.__class__.__name__}: {msg})"
        if (dataset, norm, rb_id) in WHY_NOT_COUNTED:
            why += "; " + WHY_NOT_COUNTED[(dataset, norm, rb_id)]
        return Compute(None, None, None, why)
    if not (fc.total > 0 and math.isfinite(fc.total)):
        return Compute(None, None, None, f"not counted: fvcore found no FLOPs in {what}")
    src = f"fvcore count of {what}, input {'x'.join(map(str, size))}, no weights"
    if forward_passes > 1:
        src += (f"; {forward_passes} forward passes per prediction (an ensemble): every member is "
                "in the counted module")
    if fc.params_unused:
        src += f"; {fc.params_unused:,} parameters of modules the forward pass never calls are left out"
    if fc.skipped:
        src += SKIPPED_PREFIX + ", ".join(f"{k} x{v}" for k, v in sorted(fc.skipped.items()))
    return Compute(fc.params, fc.total, size, src)


# ---------------------------------------------------------------------------------------------
def read_existing(path: Path) -> dict[str, dict[str, str]]:
    if not Path(path).is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def make_rows(info_rows: Iterable[InfoRow], existing: dict[str, dict[str, str]], *, count: bool = True,
              recount: bool = False, log: Callable[[str], None] | None = None,
              progress: Callable[[dict[str, str]], None] | None = None,
              recount_ops: Iterable[str] = ()) -> list[dict[str, str]]:
    """The reported rows, sorted by board then AutoAttack accuracy; compute reused from ``existing``
    (keyed by row id) unless ``recount``, or unless its count skipped one of ``recount_ops``
    (:func:`skipped_ops`: after a new fvcore handle, only the rows it changes are counted again);
    counted when ``count``, else left unknown. ``progress`` is called with every freshly counted
    row (to save the work so far)."""
    recount_ops = set(recount_ops)
    rows = []
    seen: dict[str, str] = {}
    for r in info_rows:
        row = base_row(r)
        if row["id"] in seen:
            raise HarnessError(f"{r.where}: duplicate entry {row['id']!r} (also {seen[row['id']]})")
        seen[row["id"]] = r.where
        old = existing.get(row["id"])
        if old is not None and not recount and old.get("inference_flops") and old.get("compute_source") \
                and not recount_ops & skipped_ops(old["compute_source"]):
            for k in ("params", "inference_flops", "input_size", "compute_source"):
                row[k] = old.get(k, "")
        elif count:
            t0 = time.perf_counter()
            c = count_compute(r.dataset, r.norm, r.robustbench_id, row["architecture"], int(row["forward_passes"]))
            row["params"] = "" if c.params is None else str(c.params)
            row["inference_flops"] = "" if c.flops is None else f"{c.flops:.6g}"
            row["input_size"] = "" if c.input_size is None else "x".join(map(str, c.input_size))
            row["compute_source"] = c.source
            if log:
                log(f"{row['id']}: {c.source[:100]} ({time.perf_counter() - t0:.1f} s)")
            if progress:
                progress(row)
        else:
            row["compute_source"] = "not counted: import run with --no-count"
        rows.append(row)
    rows.sort(key=lambda x: (registry.order(x["dataset"]), x["dataset"], THREAT_MODELS.index(x["norm"]),
                             -float(x["autoattack_acc_percent"]), x["robustbench_id"]))
    return rows


def write_rows(rows: list[dict[str, str]], out: Path) -> None:
    """Write reported.csv atomically (a temporary file renamed into place)."""
    import io

    from harness.core.files import atomic_write_text
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(Path(out), buf.getvalue())


def skipped_ops(compute_source: str) -> set[str]:
    """The operators a row's ``compute_source`` lists as not counted by fvcore (``aten::x``)."""
    _, sep, tail = compute_source.partition(SKIPPED_PREFIX)
    return set(re.findall(r"aten::[A-Za-z0-9_]+", tail)) if sep else set()


def import_robustbench(source: Path, out: Path, *, count: bool = True, recount: bool = False,
                       log: Callable[[str], None] | None = None,
                       recount_ops: Iterable[str] = ()) -> list[dict[str, str]]:
    """Regenerate ``out`` (reported.csv) from ``source``: a RobustBench checkout (or its
    ``model_info/`` folder) or the snapshot CSV. Returns the rows written."""
    existing = read_existing(out)
    counted: dict[str, dict[str, str]] = {}

    def save(row: dict[str, str]) -> None:
        # every 10 counted rows, keep them in ``out`` (reused by a rerun if this one is interrupted)
        counted[row["id"]] = row
        if len(counted) % 10 == 0:
            merged = {**existing, **counted}
            write_rows([{k: r.get(k, "") for k in COLUMNS} for r in merged.values()], out)

    rows = make_rows(read_source(source), {} if recount else existing, count=count, recount=False, log=log,
                     progress=save, recount_ops=recount_ops)
    write_rows(rows, out)
    return rows


def main_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
