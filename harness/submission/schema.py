"""The submission: ``submissions/<id>/submission.yaml`` validated by pydantic v2.

This module never imports torch. It parses and validates metadata, resolves every file path inside
the submission folder (or inside an installed package, for checkpoints that ship with one) and
checks hashes. ``harness validate`` and ``harness schema`` live on it.

A submission is a stranger's input. The YAML is read by :mod:`harness.submission.yamlsafe` (no duplicate keys,
bounded depth and size, no symlink out of the folder); every number of the schema is finite and
bounded, every path is a plain relative path, every URL is http(s), and every file of the folder is
covered by a hash (:mod:`harness.submission.manifest`). Each problem is one line naming its field.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import re
import sys
import unicodedata
from fractions import Fraction
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.certifiers import registry as certifiers
from harness.core import plugins
from harness.core.errors import field_path
from harness.core.settings import DEFAULT_MAX_MEMORY, DEFAULT_MAX_STAGE_TIMEOUT_S
from harness.core.units import parse_size
from harness.data import registry as datasets

#: the dataset names a submission may give (the registry, harness.data.registry, at import time; the
#: schema itself checks against the registry when it validates, so a registered dataset is accepted)
DATASETS = tuple(datasets.names())


def _known_certifier(v: str) -> str:
    # the registry is read at validation time (a plug-in may register a certifier after import)
    if v not in certifiers.names():
        raise ValueError(certifiers.unknown_message(v))
    return v


def _certifier_enum(schema: dict[str, Any]) -> None:
    schema["enum"] = list(certifiers.names())


#: a registered certifier's name (:mod:`harness.certifiers`; the JSON schema lists them as an enum)
CertifyMethod = Annotated[str, AfterValidator(_known_certifier), Field(json_schema_extra=_certifier_enum)]


#: packages whose installed files may hold a checkpoint (``model.checkpoint.package``), each with the
#: folder of its distribution that ``model.checkpoint.path`` is relative to
ALLOWED_PACKAGES = {"pyautoattack": "pyautoattack"}
MAX_SEED = 2**32 - 1  # numpy's and AutoAttack's seeds are 32-bit
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255  # one path component, as on every common file system


class _Strict(BaseModel):
    # allow_inf_nan=False: every float of the schema is finite (`eps: .inf` and `.nan` are refused)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def parse_eps(value: Any) -> float:
    """A finite number, or a string such as ``"8/255"`` or ``"0.3"``."""
    if isinstance(value, bool):
        raise ValueError("must be a number or a fraction string like '8/255'")
    out: float | None = None
    try:
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str) and len(value) <= 64 \
                and re.fullmatch(r"\s*[0-9.]+\s*(/\s*[0-9.]+\s*)?", value):
            out = float(Fraction(value.replace(" ", "")))
    except (ValueError, ZeroDivisionError, OverflowError):
        out = None
    if out is None:
        if isinstance(value, int):
            shown = str(value) if value.bit_length() < 100 else f"an integer of {value.bit_length()} bits"
        else:
            shown = repr(value)[:40]
        raise ValueError(f"must be a number or a fraction string like '8/255', got {shown}")
    if not math.isfinite(out):
        raise ValueError("must be a finite number")
    return out


#: Unicode categories refused in every string of a submission: controls (C0, DEL, C1), format
#: characters (bidi overrides and isolates U+202A-U+202E, U+2066-U+2069, zero-width characters, the
#: BOM), the line and paragraph separators U+2028/U+2029 and lone surrogates. A stranger's string is
#: printed by the CLI, the leaderboard and pr-check: none of these may reach a terminal or a log.
REFUSED_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")
#: fields of free text that may span lines (a newline or a tab, and no other control character)
MULTILINE_FIELDS = {("notes",), ("training", "command")}


_CONTROL_NAMES = {"\x00": "NUL", "\t": "TAB", "\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\x1b": "ESC",
                  "\x7f": "DEL", "\x85": "NEXT LINE", "\x9b": "CSI"}


def control_character(v: str, *, multiline: bool = False) -> str | None:
    """A description of the first character of ``v`` that may not appear in a submission's string
    (``U+202E at position 5``), or None."""
    for i, c in enumerate(v):
        if multiline and c in "\n\t":
            continue
        if unicodedata.category(c) in REFUSED_CATEGORIES:
            name = unicodedata.name(c, _CONTROL_NAMES.get(c, "a control character"))
            return f"U+{ord(c):04X} ({name}) at position {i}"
    return None


def _no_control_characters(data: Any, path: tuple[Any, ...] = ()) -> None:
    """Refuse a control, format or separator character in any string (key or value) of the raw
    submission, naming the field."""
    if isinstance(data, str):
        bad = control_character(data, multiline=path in MULTILINE_FIELDS)
        if bad is not None:
            where = field_path(path) or "submission"
            raise ValueError(f"{where}: must not contain control or format characters; found {bad}")
    elif isinstance(data, dict):
        for k, v in data.items():
            key = k if isinstance(k, str) else str(k)
            _no_control_characters(key, path + (key,))
            _no_control_characters(v, path + (key,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _no_control_characters(v, path + (i,))


def _single_line(v: str) -> str:
    bad = control_character(v)
    if bad is not None:
        raise ValueError(f"must be one line without control characters; found {bad}")
    return v


def check_url(v: str) -> str:
    """An absolute http(s) URL without spaces, quotes, angle brackets or control characters."""
    if any(ord(c) <= 32 or ord(c) == 127 or c in '"\'<>`\\' for c in v):
        raise ValueError("must be an http(s) URL without spaces, quotes, angle brackets or control characters")
    try:
        parts = urlsplit(v)
    except ValueError:
        raise ValueError("must be an http(s) URL")
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http:// or https:// URL, got scheme {parts.scheme[:20]!r}")
    return v


def check_relative_path(v: str) -> str:
    """A plain relative POSIX path inside the folder: no NUL, no '..', no '.', no empty or over-long part."""
    if "\x00" in v:
        raise ValueError("must not contain a NUL byte")
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError("must not contain control characters")
    if len(v.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ValueError(f"is longer than {MAX_PATH_BYTES} bytes")
    if not v or v.startswith("/") or "\\" in v:
        raise ValueError("must be a relative path with '/' separators")
    parts = v.split("/")
    if ".." in parts:
        raise ValueError("must be a relative path without '..'")
    if any(p in ("", ".") for p in parts):
        raise ValueError("must be a plain relative path (no empty or '.' parts)")
    for p in parts:
        if len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ValueError(f"has a name of {len(p.encode('utf-8', 'surrogatepass'))} bytes "
                             f"(at most {MAX_NAME_BYTES})")
    return v


Line = Annotated[str, Field(min_length=1, max_length=300), AfterValidator(_single_line)]
Url = Annotated[str, Field(max_length=2000), AfterValidator(check_url)]
RelPath = Annotated[str, AfterValidator(check_relative_path)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex SHA-256")]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class Paper(_Strict):
    title: Line
    url: Url | None = Field(default=None, description="http:// or https:// only")
    venue: Line | None = None
    year: int | None = Field(default=None, ge=1950, le=2100)


class ThreatModel(_Strict):
    norm: Literal["Linf", "L2"]
    eps: Annotated[float, Field(gt=0, le=1000, description="in pixel units of [0, 1] images; at most 1 for Linf")]

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> float:
        return parse_eps(v)

    @model_validator(mode="after")
    def _linf(self) -> "ThreatModel":
        if self.norm == "Linf" and self.eps > 1:
            raise ValueError(f"eps must be at most 1 for Linf (pixels lie in [0, 1]), got {self.eps:g}")
        return self

    @property
    def label(self) -> str:
        return f"{self.norm} eps={format_eps(self.eps)}"


def format_eps(eps: float) -> str:
    """8/255 for the usual image fractions, else a short decimal."""
    frac = Fraction(eps).limit_denominator(255)
    if frac.denominator == 255 and abs(float(frac) - eps) < 1e-12:
        return f"{frac.numerator}/255"
    return f"{eps:g}"


class Checkpoint(_Strict):
    path: RelPath | None = Field(default=None,
                                 description="file inside the submission folder, or inside `package` if given")
    url: str | None = Field(
        default=None, max_length=2000,
        description="instead of `path`, a hosted file (over 100 MB it must be hosted): "
                    "https://<host>/<file>, or hf://<org>/<repo>/<file>@<40-hex commit> on the Hugging Face Hub; "
                    "`harness fetch` downloads it into the local cache and checks `sha256`",
    )
    sha256: Sha256 = Field(description="lower-case hex SHA-256 of the file")
    size_bytes: int | None = Field(default=None, ge=1, le=2**40,
                                   description="the file's size in bytes: `harness fetch` reads no more than this "
                                   "(nor more than the maintainer's ROBUST_FRONTIER_MAX_DOWNLOAD_BYTES)")
    package: str | None = Field(
        default=None, description=f"an installed package that ships the file; one of: {', '.join(ALLOWED_PACKAGES)}"
    )

    @field_validator("package")
    @classmethod
    def _allowed(cls, v: str | None) -> str | None:
        if v is not None and v not in ALLOWED_PACKAGES:
            raise ValueError(f"only these packages may ship a checkpoint: {', '.join(sorted(ALLOWED_PACKAGES))}")
        return v

    @field_validator("url")
    @classmethod
    def _hosted(cls, v: str | None) -> str | None:
        if v is not None:
            from harness.submission.hosted import parse_url

            parse_url(v)  # raises ValueError with the reason
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "Checkpoint":
        if (self.path is None) == (self.url is None):
            raise ValueError("path or url: give exactly one (a file in the folder, or a hosted file)")
        if self.url is not None and self.package is not None:
            raise ValueError("package cannot be combined with url")
        return self


def _dataset_name(v: str) -> str:
    if datasets.find(v) is None or datasets.get(v).loader is None:
        raise ValueError(f"must be one of {', '.join(datasets.names())}, got {str(v)[:60]!r}")
    return v


DatasetName = Annotated[str, Field(max_length=64, json_schema_extra=lambda s: s.update(enum=datasets.names())),
                        AfterValidator(_dataset_name)]


class Preprocessing(_Strict):
    resize_crop: str | None = Field(
        default=None, max_length=64, json_schema_extra=lambda s: s.update(enum=[*datasets.PREPROCESSINGS, None]),
        description="the resize/crop applied once to the uint8 test images while loading, by RobustBench's name: "
                    + "; ".join(f"{k}: {v}" for k, v in datasets.PREPROCESSINGS.items())
                    + ". Only for datasets of images of varying size (imagenet, default Res256Crop224); "
                    "attacks and bounds work in [0, 1] pixels at the resulting resolution")
    mean: list[Annotated[float, Field(ge=-1000, le=1000)]] = Field(default_factory=lambda: [0.0], min_length=1,
                                                                   max_length=16)
    std: list[Annotated[float, Field(le=1000)]] = Field(default_factory=lambda: [1.0], min_length=1, max_length=16)

    @field_validator("resize_crop")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in datasets.PREPROCESSINGS:
            raise ValueError(f"unknown preprocessing {v[:40]!r}; one of {', '.join(datasets.PREPROCESSINGS)}")
        return v

    @model_validator(mode="after")
    def _shapes(self) -> "Preprocessing":
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have the same length")
        if any(s < 1e-6 for s in self.std):
            raise ValueError("std must be positive (at least 1e-6)")
        return self


#: the harness's own architectures and RobustBench's architecture classes (``robustbench.<Class>``),
#: as :mod:`harness.models.architectures` builds them; named here so that validation needs no torch. A
#: plug-in that registers an architecture in ``harness.models.architectures.BUILTIN`` is seen too.
BUILTIN_ARCHITECTURES = ("mnist_mlp", "mnist_small_cnn", "cifar_small_cnn")
ROBUSTBENCH_CLASSES = ("ResNet18", "ResNet34", "ResNet50", "PreActResNet18", "WideResNet")
ZOO_PREFIX = "robustbench.zoo:"


def architecture_problem(name: str) -> str | None:
    """Why ``name`` is not an architecture the harness can build, or None: a built-in name, a
    RobustBench class ``robustbench.<Class>``, or an existing RobustBench model-zoo entry
    ``robustbench.zoo:<dataset>/<threat_model>/<name>``."""
    if plugins.GROUPS["architectures"] in plugins.installed_groups():  # a plug-in registers into the live registry
        plugins.load("architectures")
    live = sys.modules.get("harness.models.architectures")  # the registry, once imported (plug-ins add to it)
    builtin = set(BUILTIN_ARCHITECTURES) | set(getattr(live, "BUILTIN", ()))
    classes = set(ROBUSTBENCH_CLASSES) | set(getattr(live, "ROBUSTBENCH_CLASSES", ()))
    if name in builtin or (name.startswith("robustbench.") and name.split(".", 1)[1] in classes):
        return None
    if name.startswith(ZOO_PREFIX):
        return zoo_entry_problem(name[len(ZOO_PREFIX):])
    known = sorted(builtin) + [f"robustbench.{c}" for c in sorted(classes)] + [
        f"{ZOO_PREFIX}<dataset>/<threat_model>/<name>"]
    return f"unknown architecture {name[:100]!r}; one of {', '.join(known)}"


def zoo_entry_problem(entry: str) -> str | None:
    """Why ``<dataset>/<threat_model>/<name>`` is not an entry of RobustBench's model zoo, or None.

    The one place where validation imports robustbench (and so torch): the zoo's list of entries is
    Python code in robustbench, with no data file to read instead. Only the names are looked up;
    nothing is built or downloaded."""
    parts = entry.split("/")
    if len(parts) != 3 or not all(parts):
        return (f"a model-zoo architecture is '{ZOO_PREFIX}<dataset>/<threat_model>/<name>', "
                f"got {(ZOO_PREFIX + entry)[:120]!r}")
    zoo = _zoo_names()
    if zoo is None:
        return "robustbench is not installed: a robustbench.zoo architecture cannot be checked or built"
    dataset, threat, name = parts
    if dataset not in zoo:
        return f"robustbench.zoo has no dataset {dataset[:40]!r}; one of {', '.join(sorted(zoo))}"
    if threat not in zoo[dataset]:
        return (f"robustbench.zoo has no threat model {threat[:40]!r} for {dataset}; "
                f"one of {', '.join(sorted(zoo[dataset]))}")
    if name not in zoo[dataset][threat]:
        return f"robustbench.zoo has no entry {name[:100]!r} for {dataset}/{threat}"
    return None


@functools.lru_cache(maxsize=1)
def _zoo_names() -> dict[str, dict[str, frozenset[str]]] | None:
    """RobustBench's model zoo as {dataset: {threat model: entry names}} (read once), or None when
    robustbench cannot be imported."""
    try:
        importlib.import_module("harness.models.compat")  # alias autoattack before robustbench imports it
        from robustbench.model_zoo import model_dicts
    except Exception:  # noqa: BLE001 - not installed, or broken: said in one line by the caller
        return None
    return {getattr(d, "value", str(d)): {getattr(t, "value", str(t)): frozenset(entries)
                                          for t, entries in by_threat.items()}
            for d, by_threat in model_dicts.items()}


#: bounds on the values of ``model.architecture_kwargs`` (the build also counts parameters on the
#: meta device before allocating anything: see ``harness.models.architectures``)
MAX_KWARG_INT = 100_000
MAX_KWARGS = 32


class ModelSpec(_Strict):
    format: Literal["state_dict", "torchscript", "onnx"]
    architecture: str | None = Field(
        default=None, max_length=200,
        description="for state_dict: a built-in architecture (mnist_small_cnn, mnist_mlp, cifar_small_cnn), a "
                    "RobustBench class (robustbench.ResNet18, robustbench.WideResNet with architecture_kwargs depth "
                    "and widen_factor, ...), or a RobustBench model-zoo entry's architecture "
                    "'robustbench.zoo:<dataset>/<threat_model>/<name>', e.g. "
                    "'robustbench.zoo:cifar10/Linf/Carmon2019Unlabeled' (built without downloading weights)",
    )
    architecture_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description=f"keyword arguments of the architecture: integers in [0, {MAX_KWARG_INT}], finite numbers, "
                    "booleans or short strings")
    checkpoint: Checkpoint
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    forward_passes: int = Field(default=1, ge=1, le=10_000)

    @field_validator("architecture_kwargs")
    @classmethod
    def _kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) > MAX_KWARGS:
            raise ValueError(f"at most {MAX_KWARGS} arguments")
        for k, x in v.items():
            if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", k):
                raise ValueError(f"argument names must be Python identifiers, got {str(k)[:40]!r}")
            if isinstance(x, bool) or x is None:
                continue
            if isinstance(x, int):
                if not 0 <= x <= MAX_KWARG_INT:
                    shown = str(x) if len(str(x)) <= 20 else f"{str(x)[:12]}... ({len(str(x))} digits)"
                    raise ValueError(f"{k} must be an integer in [0, {MAX_KWARG_INT}], got {shown}")
            elif isinstance(x, float):
                if not (math.isfinite(x) and abs(x) <= 1e6):
                    raise ValueError(f"{k} must be a finite number of magnitude at most 1e6, got {x!r}")
            elif isinstance(x, str):
                if len(x) > 200:
                    raise ValueError(f"{k}: strings are limited to 200 characters")
            else:
                raise ValueError(f"{k} must be an integer, a number, a boolean or a string, got {type(x).__name__}")
        return v

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, v: str | None) -> str | None:
        if v is not None:
            problem = architecture_problem(v)
            if problem is not None:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _arch(self) -> "ModelSpec":
        if self.format == "state_dict" and not self.architecture:
            raise ValueError("architecture is required when format is state_dict")
        if self.format != "state_dict" and self.architecture:
            raise ValueError(f"architecture must not be given for format {self.format}")
        return self


class Training(_Strict):
    method: Literal["standard", "pgd", "trades", "mart", "fgsm", "free", "ibp", "crown-ibp", "other"]
    attack_steps: int = Field(default=0, ge=0, le=100_000,
                              description="K of PGD/TRADES/MART; for free: the replay count m")
    awp: bool = Field(default=False, description="adversarial weight perturbation on top of the method")
    epochs: float | None = Field(default=None, gt=0, le=1e6)
    examples_per_epoch: int | None = Field(default=None, gt=0, le=10**12)
    extra_data: int = Field(default=0, ge=0, le=10**12, description="synthetic or extra images used in training")
    declared_flops: float | None = Field(default=None, gt=0, le=1e35, description="overrides the estimate")
    declared_flops_convention: Literal["1 per multiply-add", "2 per multiply-add"] = "1 per multiply-add"
    command: str | None = Field(default=None, max_length=5000)
    seed: Seed | None = None

    @model_validator(mode="after")
    def _steps(self) -> "Training":
        if self.method in ("pgd", "trades", "mart", "free") and self.attack_steps < 1:
            raise ValueError(f"attack_steps must be >= 1 for method {self.method}")
        return self


class Smoothing(_Strict):
    sigma: float = Field(gt=0, le=100)
    n0: int = Field(default=100, ge=1, le=10**8)
    n: int = Field(default=100_000, ge=1, le=10**8)
    alpha: float = Field(default=0.001, gt=0, lt=1)



class Limits(_Strict):
    """Resource limits the submission asks for in the sandboxed evaluation worker (see README, "The
    sandbox"). They can only LOWER the maintainer's caps (harness.core.settings: ``--memory-limit``,
    ``--stage-timeout``, ``--cpu-limit`` or the runner's ROBUST_FRONTIER_MAX_* variables); a field
    left out asks for nothing."""

    memory: int | None = Field(
        default=None, ge=2**20, le=2**40, description="address space the worker may add after loading "
        "its libraries, e.g. '8G' (on CUDA: the worker's resident host memory); at most the maintainer's cap "
        f"({DEFAULT_MAX_MEMORY // 2**30}G unless the runner sets another)")
    stage_timeout_s: float | None = Field(
        default=None, gt=0, le=7 * 24 * 3600, description="wall-clock seconds per stage (and for loading the "
        f"model); at most the maintainer's cap ({DEFAULT_MAX_STAGE_TIMEOUT_S:g} s unless the runner sets another)")
    cpu_seconds: float | None = Field(default=None, gt=0, le=7 * 24 * 3600 * 1024,
                                      description="CPU seconds per stage (all threads); default: the wall-clock "
                                      "limit x the number of CPU cores; at most the maintainer's cap")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if v is None:
            return None
        size = parse_size(v)
        if size is None:
            raise ValueError("a submission cannot lift the memory limit (the maintainer can: --memory-limit none)")
        return size


class Evaluation(_Strict):
    n_examples: int | None = Field(default=None, ge=1, le=10**8, description="first N test points; default all")
    autoattack_version: Literal["standard", "rand"] = "standard"
    seed: Seed = 0
    batch_size: int = Field(default=500, ge=1, le=100_000)
    certify: list[CertifyMethod] | None = Field(
        default=None, max_length=16, description="certification methods (the registry of harness.certifiers); "
                                                 "default [ibp, crown] within the size budget"
    )
    eps_max: float | None = Field(default=None, gt=0, le=1000, description="upper end of the radius search")
    radius_tol: float | None = Field(default=None, gt=0, le=1000, description="radius search tolerance")
    certify_first: bool = Field(default=True, description="skip AutoAttack on certified points")
    certify_budget_s: float | None = Field(
        default=None, gt=0, le=86400, description="wall-clock seconds per example for the complete certifier "
        "(IBP, CROWN, alpha-CROWN, then branch and bound); default 60; the maintainer's cap wins "
        "(--certify-budget or ROBUST_FRONTIER_MAX_CERTIFY_BUDGET_S, default 600)")
    limits: Limits = Field(default_factory=Limits, description="the evaluation worker's resource limits")

    @field_validator("eps_max", mode="before")
    @classmethod
    def _eps_max(cls, v: Any) -> Any:
        return None if v is None else parse_eps(v)


class Submission(_Strict):
    """The schema of ``submission.yaml``."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="slug, equal to the folder name")
    name: Line
    authors: list[Line] = Field(min_length=1, max_length=200)
    paper: Paper | None = None
    license: Line
    dataset: DatasetName = Field(description="a dataset of the registry (harness.data.registry)")
    dataset_path: RelPath | None = Field(
        default=None, description="for dataset 'custom': an .npz with uint8 x and labels y, in the folder "
                                  "(list it under `files` with its SHA-256)"
    )
    threat_model: ThreatModel = Field(description="required unless the dataset has a default (imagenet: Linf 4/255)")
    model: ModelSpec
    training: Training
    evaluation: Evaluation = Field(default_factory=Evaluation)
    smoothing: Smoothing | None = None
    notes: str | None = Field(default=None, max_length=20_000)
    files: dict[RelPath, Sha256] = Field(
        default_factory=dict, max_length=1000,
        description="SHA-256 of every file of the folder other than submission.yaml and the checkpoint "
                    "(ONNX external data, a custom data set, ...): `relative/path: sha256`")

    @model_validator(mode="before")
    @classmethod
    def _printable(cls, data: Any) -> Any:
        _no_control_characters(data)
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_threat(cls, data: Any) -> Any:
        if isinstance(data, dict) and "threat_model" not in data and isinstance(data.get("dataset"), str):
            d = datasets.find(data["dataset"])
            if d is not None and d.default_threat_model is not None:
                norm, eps = d.default_threat_model
                data = {**data, "threat_model": {"norm": norm, "eps": eps}}
        return data

    @model_validator(mode="after")
    def _custom(self) -> "Submission":
        custom = datasets.get(self.dataset).custom
        if custom and not self.dataset_path:
            raise ValueError(f"dataset_path is required when dataset is {self.dataset}")
        if not custom and self.dataset_path:
            raise ValueError("dataset_path is only for dataset custom")
        allowed = datasets.get(self.dataset).preprocessings
        prep = self.model.preprocessing.resize_crop
        if prep is not None and prep not in allowed:
            raise ValueError(f"resize_crop {prep!r} is not available for dataset {self.dataset} "
                             f"(its images are {'all of one size' if allowed == ('none',) else 'resized'}); "
                             f"choose {' or '.join(allowed)}")
        if self.smoothing is None and "smoothing" in (self.evaluation.certify or ()):
            raise ValueError("smoothing is required when evaluation.certify lists smoothing (give sigma)")
        return self

    @property
    def resize_crop(self) -> str:
        """The declared resize/crop, or the dataset's default."""
        return self.model.preprocessing.resize_crop or datasets.get(self.dataset).default_preprocessing


# ---------------------------------------------------------------------------------------------
#: the fields of a submission that change no result: who made it and how to cite it, the licence,
#: free-text notes, how the checkpoint was trained as a shell command and its seed (the record's
#: training FLOPs come from the other training fields, which do count), and the worker's resource
#: limits (they cap a run, and a run over them fails instead of giving other numbers). Everything else
#: (id, dataset, threat model, model and checkpoint, preprocessing, the other training fields,
#: evaluation settings, files) is result-relevant and covered by ``provenance.results_sha256``.
METADATA_FIELDS: tuple[tuple[str, ...], ...] = (
    ("name",), ("authors",), ("paper",), ("license",), ("notes",),
    ("training", "command"), ("training", "seed"), ("evaluation", "limits"),
)
RESULTS_HASH_VERSION = 1


def _drop_empty(v: Any) -> Any:
    if isinstance(v, dict):
        out = {k: _drop_empty(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x != {}}
    if isinstance(v, list):
        return [_drop_empty(x) for x in v]
    return v


def results_fields(spec: Submission) -> dict[str, Any]:
    """The result-relevant fields of a validated submission, as plain JSON data: every field other
    than :data:`METADATA_FIELDS`, with values as validated (``eps: 8/255`` is a number) and fields
    at their default left out (so writing a default out, or a new optional field of a later harness,
    changes nothing)."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    for path in METADATA_FIELDS:
        holder = data
        for key in path[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            holder.pop(path[-1], None)
    return _drop_empty(data)


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no spaces, ASCII only, no NaN: the bytes :func:`results_sha256` hashes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def results_sha256(spec: Submission) -> str:
    """``provenance.results_sha256``: the SHA-256 of the canonical JSON (:func:`canonical_json`) of
    ``{"results_fields_version": 1, "fields": results_fields(spec)}``. A metadata-only edit of
    submission.yaml (a name, the licence, the paper, notes) keeps it, and so keeps the record valid."""
    return hashlib.sha256(canonical_json({"results_fields_version": RESULTS_HASH_VERSION,
                                          "fields": results_fields(spec)})).hexdigest()



def json_schema() -> dict[str, Any]:
    return Submission.model_json_schema()
