"""The submission: ``submissions/<id>/submission.yaml`` validated by pydantic v2.

This module never imports torch. It parses and validates metadata, resolves every file path inside
the submission folder (or inside an installed package, for checkpoints that ship with one) and
checks hashes. ``harness validate`` and ``harness schema`` live on it.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import HarnessError
from .files import confine, sha256_file

DATASETS = ("mnist", "cifar10", "cifar100", "custom")
CertifyMethod = Literal["ibp", "crown", "crown-ibp"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def parse_eps(value: Any) -> float:
    """A number, or a string such as ``"8/255"`` or ``"0.3"``."""
    if isinstance(value, bool):
        raise ValueError("eps must be a number or a fraction string like '8/255'")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9.]+\s*(/\s*[0-9.]+\s*)?", value):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            pass
    raise ValueError(f"eps must be a number or a fraction string like '8/255', got {value!r}")


class Paper(_Strict):
    title: str
    url: str | None = None
    venue: str | None = None
    year: int | None = Field(default=None, ge=1950, le=2100)


class ThreatModel(_Strict):
    norm: Literal["Linf", "L2"]
    eps: Annotated[float, Field(gt=0)]

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> float:
        return parse_eps(v)

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
    path: str | None = Field(default=None,
                             description="file inside the submission folder, or inside `package` if given")
    url: str | None = Field(
        default=None,
        description="instead of `path`, a hosted file (over 100 MB it must be hosted): "
                    "https://<host>/<file>, or hf://<org>/<repo>/<file>@<40-hex commit> on the Hugging Face Hub; "
                    "`harness fetch` downloads it into the local cache and checks `sha256`",
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex SHA-256 of the file")
    package: str | None = Field(
        default=None, description="an installed Python package that ships the file (e.g. pyautoattack)"
    )

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        if v is None:
            return v
        p = Path(v)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError("must be a relative path without '..'")
        return v

    @field_validator("url")
    @classmethod
    def _hosted(cls, v: str | None) -> str | None:
        if v is not None:
            from .hosted import parse_url

            parse_url(v)  # raises ValueError with the reason
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "Checkpoint":
        if (self.path is None) == (self.url is None):
            raise ValueError("path or url: give exactly one (a file in the folder, or a hosted file)")
        if self.url is not None and self.package is not None:
            raise ValueError("package cannot be combined with url")
        return self


class Preprocessing(_Strict):
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])

    @model_validator(mode="after")
    def _shapes(self) -> "Preprocessing":
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have the same length")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        return self


class ModelSpec(_Strict):
    format: Literal["state_dict", "torchscript", "onnx"]
    architecture: str | None = Field(
        default=None,
        description="for state_dict: a built-in architecture (mnist_small_cnn, mnist_mlp, cifar_small_cnn), a "
                    "RobustBench class (robustbench.ResNet18, robustbench.WideResNet with architecture_kwargs depth "
                    "and widen_factor, ...), or a RobustBench model-zoo entry's architecture "
                    "'robustbench.zoo:<dataset>/<threat_model>/<name>', e.g. "
                    "'robustbench.zoo:cifar10/Linf/Carmon2019Unlabeled' (built without downloading weights)",
    )
    architecture_kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Checkpoint
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    forward_passes: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _arch(self) -> "ModelSpec":
        if self.format == "state_dict" and not self.architecture:
            raise ValueError("architecture is required when format is state_dict")
        if self.format != "state_dict" and self.architecture:
            raise ValueError(f"architecture must not be given for format {self.format}")
        return self


class Training(_Strict):
    method: Literal["standard", "pgd", "trades", "fgsm", "ibp", "crown-ibp", "other"]
    attack_steps: int = Field(default=0, ge=0)
    epochs: float | None = Field(default=None, gt=0)
    examples_per_epoch: int | None = Field(default=None, gt=0)
    extra_data: int = Field(default=0, ge=0, description="synthetic or extra images used in training")
    declared_flops: float | None = Field(default=None, gt=0, description="overrides the estimate")
    declared_flops_convention: Literal["1 per multiply-add", "2 per multiply-add"] = "1 per multiply-add"
    command: str | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _steps(self) -> "Training":
        if self.method in ("pgd", "trades") and self.attack_steps < 1:
            raise ValueError(f"attack_steps must be >= 1 for method {self.method}")
        return self


class Smoothing(_Strict):
    sigma: float = Field(gt=0)
    n0: int = Field(default=100, ge=1)
    n: int = Field(default=100_000, ge=1)
    alpha: float = Field(default=0.001, gt=0, lt=1)


class Evaluation(_Strict):
    n_examples: int | None = Field(default=None, ge=1, description="first N test points; default all")
    autoattack_version: Literal["standard", "rand"] = "standard"
    seed: int = 0
    batch_size: int = Field(default=500, ge=1)
    certify: list[CertifyMethod] | None = Field(
        default=None, description="certification methods; default [ibp, crown] within the size budget"
    )
    eps_max: float | None = Field(default=None, gt=0, description="upper end of the radius search")
    radius_tol: float | None = Field(default=None, gt=0, description="radius search tolerance")
    certify_first: bool = Field(default=True, description="skip AutoAttack on certified points")

    @field_validator("eps_max", mode="before")
    @classmethod
    def _eps_max(cls, v: Any) -> Any:
        return None if v is None else parse_eps(v)


class Submission(_Strict):
    """The schema of ``submission.yaml``."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="slug, equal to the folder name")
    name: str = Field(min_length=1)
    authors: list[str] = Field(min_length=1)
    paper: Paper | None = None
    license: str = Field(min_length=1)
    dataset: Literal["mnist", "cifar10", "cifar100", "custom"]
    dataset_path: str | None = Field(
        default=None, description="for dataset 'custom': an .npz with uint8 x and labels y, in the folder"
    )
    threat_model: ThreatModel
    model: ModelSpec
    training: Training
    evaluation: Evaluation = Field(default_factory=Evaluation)
    smoothing: Smoothing | None = None
    notes: str | None = None

    @model_validator(mode="after")
    def _custom(self) -> "Submission":
        if self.dataset == "custom" and not self.dataset_path:
            raise ValueError("dataset_path is required when dataset is custom")
        if self.dataset != "custom" and self.dataset_path:
            raise ValueError("dataset_path is only for dataset custom")
        return self


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@dataclass(frozen=True)
class LoadedSubmission:
    spec: Submission
    folder: Path
    yaml_path: Path
    yaml_sha256: str

    def checkpoint_path(self) -> Path:
        return resolve_checkpoint(self.spec, self.folder)

    def dataset_path(self) -> Path | None:
        if self.spec.dataset_path is None:
            return None
        return confine(self.folder, self.spec.dataset_path, field="dataset_path")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _field_names() -> set[str]:
    models = (Submission, ModelSpec, Training, Preprocessing, Evaluation, Checkpoint, ThreatModel, Smoothing, Paper)
    return {name for cls in models for name in cls.model_fields}


def validation_problems(err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            msg = "unknown field (typo?)"
        elif e["type"] == "value_error" and (m := re.match(r"([a-z_0-9]+) ", msg)) \
                and m.group(1) in _field_names() and loc[-1:] != (m.group(1),):
            # cross-field checks (model validators) start their message with the field they blame
            loc = loc + (m.group(1),)
        problems.append(Problem(_loc(loc), msg))
    return problems


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such file")
    except (OSError, UnicodeDecodeError) as e:
        raise HarnessError(f"{path}: cannot read: {e}")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise HarnessError(f"{path}: malformed YAML{where}: {problem}")


def parse_submission(path: str | Path) -> tuple[LoadedSubmission | None, list[Problem]]:
    """Parse and validate the schema; returns the submission (or None) and every problem found."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        return None, [Problem("", "the file must hold a YAML mapping of submission fields")]
    try:
        spec = Submission.model_validate(raw)
    except ValidationError as err:
        return None, validation_problems(err)
    loaded = LoadedSubmission(spec, path.parent.resolve(), path.resolve(), sha256_file(path))
    return loaded, []


def resolve_checkpoint(spec: Submission, folder: Path) -> Path:
    ck = spec.model.checkpoint
    if ck.url is not None:  # hosted: only ever read from the local cache; `harness fetch` downloads
        from .hosted import cached_checkpoint

        return cached_checkpoint(ck.url, ck.sha256, fetch_hint=f"harness fetch {folder / 'submission.yaml'}")
    assert ck.path is not None
    if ck.package is None:
        return confine(folder, ck.path, field="model.checkpoint.path")
    try:
        found = importlib.util.find_spec(ck.package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise HarnessError(f"package {ck.package!r} is not installed", field="model.checkpoint.package")
    pkg_root = Path(list(found.submodule_search_locations)[0])
    return confine(pkg_root, ck.path, field="model.checkpoint.path")


def check_files(sub: LoadedSubmission, *, check_hash: bool = True) -> list[Problem]:
    """Problems with the files a valid schema points at: folder name, paths, existence, hashes."""
    problems: list[Problem] = []
    spec = sub.spec
    if sub.folder.name != spec.id:
        problems.append(Problem("id", f"must equal the folder name {sub.folder.name!r}, got {spec.id!r}"))
    try:
        ck = resolve_checkpoint(spec, sub.folder)
        if not ck.is_file():
            problems.append(Problem("model.checkpoint.path", f"file not found: {ck}"))
        elif check_hash:
            actual = sha256_file(ck)
            if actual != spec.model.checkpoint.sha256:
                problems.append(Problem(
                    "model.checkpoint.sha256",
                    f"checkpoint hash mismatch: file has {actual}, submission says {spec.model.checkpoint.sha256}",
                ))
    except HarnessError as e:
        problems.append(Problem(e.field or "model.checkpoint", str(e).split(": ", 1)[-1]))
    if spec.dataset == "custom":
        try:
            data = sub.dataset_path()
            if data is not None and not data.is_file():
                problems.append(Problem("dataset_path", f"file not found: {data}"))
        except HarnessError as e:
            problems.append(Problem("dataset_path", str(e).split(": ", 1)[-1]))
    return problems


def load_submission(path: str | Path, *, check_hash: bool = True) -> LoadedSubmission:
    """Parse, validate and check files; raise a one-line HarnessError on the first problem."""
    sub, problems = parse_submission(path)
    if sub is not None:
        problems = check_files(sub, check_hash=check_hash)
    if problems:
        extra = f" (and {len(problems) - 1} more; run `harness validate {path}`)" if len(problems) > 1 else ""
        raise HarnessError(f"{path}: {problems[0]}{extra}")
    assert sub is not None
    return sub


def json_schema() -> dict[str, Any]:
    return Submission.model_json_schema()
