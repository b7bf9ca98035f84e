"""Loading a submission's model safely, and wrapping it so that every stage sees one interface.

The only place in the harness that reads checkpoints:
- ``state_dict``: safetensors, or ``torch.load(..., weights_only=True)``, which refuses any pickle
  that would build arbitrary objects or run code;
- ``torchscript``: refused unless the caller trusts the code (``harness eval --trust-code``):
  TorchScript is a programming language, and ``torch.from_file`` / ``torch.save`` compile inside a
  scripted ``forward`` or ``__setstate__``, so an archive can read and write any file;
- ``onnx``: ``onnx.load`` and onnx2torch, which gives a torch.fx GraphModule. ONNX carries no code,
  but onnx2torch turns node names into module names and torch.fx writes those into the Python
  source of ``forward`` unescaped: every node, value and initializer name is therefore replaced by a
  generated identifier before conversion, and the generated source is checked before Python ever
  compiles it (:func:`check_fx_source`).

Every forward pass a stage makes on data goes through :class:`CheckedModel`, which checks that the
logits have shape (B, num_classes) and are finite, and names the first bad example.

The result is a :class:`LoadedModel`: an ``nn.Module`` in eval mode that takes NCHW float inputs in
[0, 1] with the submission's normalisation inside it (so attacks and bounds work in pixel space).
"""
from __future__ import annotations

import ast
import contextlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from harness.core.errors import HarnessError, one_line
from harness.core.files import sha256_file
from harness.core.settings import DEFAULT_MAX_MEMORY
from harness.submission.load import LoadedSubmission, verify_files


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


def error_line(e: BaseException, limit: int = 200) -> str:
    """One line describing ``e``: its first line, or for TorchScript interpreter errors (whose first
    line only says that an operation failed) the last one, which holds the cause."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    line = lines[-1] if "TorchScript interpreter" in lines[0] else lines[0]
    return line[:limit]


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation that failed (host or GPU memory, e.g. under the worker's memory limit)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("can't allocate memory" in msg or "out of memory" in msg)


def check_logits(out: Any, batch: int, num_classes: int, *, stage: str, index: Any = None,
                 example: int | None = None) -> None:
    """The one output check of every forward pass on data: a tensor of shape (batch, num_classes),
    all finite. The error names the first bad example: ``index[j]`` (the examples' test-set
    indices) when the caller knows them, else ``example`` (all rows derive from one example, e.g.
    noise samples), else the row of the batch.
    """
    if not isinstance(out, torch.Tensor):
        raise HarnessError(f"model returned a {type(out).__name__}, not a tensor of logits (stage {stage})")
    if out.dim() != 2 or out.shape[0] != batch or out.shape[1] != num_classes:
        raise HarnessError(f"model output has shape {tuple(out.shape)}, expected (N, {num_classes}) "
                           f"with N = {batch} (stage {stage})")
    finite = torch.isfinite(out).all(dim=1)
    if bool(finite.all()):
        return
    row = int((~finite).nonzero()[0, 0])
    kind = "NaN" if bool(torch.isnan(out[row]).any()) else "infinite"
    if index is not None and len(index) == batch:
        where = f"example {int(index[row])}"
    elif example is not None:
        where = f"example {example}"
    else:
        where = f"row {row} of a batch of {batch} inputs"
    raise HarnessError(f"model returned {kind} logits for {where} (stage {stage})")


class CheckedModel(nn.Module):
    """The model as stages call it on data: ``forward(x, index=None)`` checks every output with
    :func:`check_logits`. (Kept out of ``LoadedModel.module``, which torch.fx and fvcore trace: a
    data-dependent check cannot be traced.)"""

    def __init__(self, module: nn.Module, num_classes: int, stage: str, example: int | None = None):
        super().__init__()
        self.module = module
        self.num_classes = num_classes
        self.stage = stage
        self.example = example

    def forward(self, x: torch.Tensor, index: Any = None) -> torch.Tensor:
        out = self.module(x)
        check_logits(out, int(x.shape[0]), self.num_classes, stage=self.stage, index=index,
                     example=self.example)
        return out


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

    def checked(self, stage: str, example: int | None = None) -> CheckedModel:
        """The model with its outputs checked on every call, errors naming ``stage``."""
        return CheckedModel(self.module, self.num_classes, stage, example)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int, *, stage: str = "predict",
                index: Any = None) -> torch.Tensor:
        checked = self.checked(stage)
        out = []
        for i in range(0, x.shape[0], batch_size):
            idx = None if index is None else index[i : i + batch_size]
            out.append(checked(x[i : i + batch_size].to(self.device), idx).argmax(1).cpu())
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
            "(loaded with weights_only=True; nothing in it ran). Save a plain state_dict or safetensors. "
            f"[{first[:160]}]",
            field="model.checkpoint",
        )
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise HarnessError(f"cannot read checkpoint: {str(e).splitlines()[0][:200]}", field="model.checkpoint")
    return _unwrap_state_dict(obj)


#: largest model (parameters and buffers) the harness builds when no memory limit says otherwise
MAX_MODEL_BYTES = DEFAULT_MAX_MEMORY  # the maintainer's default memory cap (harness.core.settings)


def _build_state_dict_model(sub: LoadedSubmission, path: Path, max_bytes: int) -> nn.Module:
    from harness.models.architectures import build_architecture

    spec = sub.spec.model
    try:
        net = build_architecture(spec.architecture or "", spec.architecture_kwargs, max_bytes=max_bytes)
    except (RuntimeError, ValueError, OverflowError) as e:
        raise HarnessError(f"cannot build architecture {spec.architecture}: {one_line(e, 200)}",
                           field="model.architecture_kwargs")
    state = read_state_dict(path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = one_line(e, 300)
        raise HarnessError(f"checkpoint does not fit architecture {spec.architecture}: {msg[:300]}",
                           field="model.checkpoint")
    return net


TORCHSCRIPT_REFUSED = (
    "TorchScript submissions are refused: TorchScript is code, and a scripted forward or __setstate__ "
    "can read and write any file (torch.from_file, torch.save). Export the model to ONNX "
    "(torch.onnx.export) or save a state_dict (safetensors) of a known architecture instead; "
    "`harness eval --trust-code` loads TorchScript for your own models only (unsafe)"
)


def _build_torchscript(path: Path, trust_code: bool) -> nn.Module:
    if not trust_code:
        raise HarnessError(TORCHSCRIPT_REFUSED, field="model.format")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError and friends for bad archives
        raise HarnessError(f"cannot load TorchScript archive: {str(e).splitlines()[0][:200]}",
                           field="model.checkpoint")


# --------------------------------------------------------------------------------------------- ONNX
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def sanitize_onnx(proto) -> None:
    """Rename, in place, every node to ``n<i>`` and every value (graph inputs and outputs,
    value_info, initializers, node inputs and outputs) to ``v<i>``, consistently, so that no
    string of the file reaches the Python source torch.fx generates. The graph computes the same
    function: names only connect nodes to values. Graph features onnx2torch cannot convert anyway
    and whose names this renaming would not reach (subgraphs of If/Loop/Scan, local functions,
    sparse initializers, non-standard operator domains) are refused.
    """
    import onnx

    g = proto.graph
    if len(proto.functions):
        raise HarnessError("ONNX models with local functions are not supported", field="model.checkpoint")
    if len(g.sparse_initializer):
        raise HarnessError("ONNX models with sparse initializers are not supported", field="model.checkpoint")
    values: dict[str, str] = {}

    def value(name: str) -> str:
        if name == "":  # an omitted optional input
            return ""
        if name not in values:
            values[name] = f"v{len(values)}"
        return values[name]

    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = value(vi.name)
    for init in g.initializer:
        init.name = value(init.name)
    for i, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx"):
            raise HarnessError(f"ONNX node {i} ({node.op_type[:40]!r}) uses the operator domain "
                               f"{node.domain[:60]!r}; only the standard ONNX operators are supported",
                               field="model.checkpoint")
        for a in node.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) or a.HasField("g") or len(a.graphs):
                raise HarnessError(f"ONNX node {i} ({node.op_type[:40]!r}) has a subgraph (If/Loop/Scan); "
                                   "control flow is not supported", field="model.checkpoint")
        node.domain = ""
        node.name = f"n{i}"
        node.input[:] = [value(v) for v in node.input]
        node.output[:] = [value(v) for v in node.output]
    for entry in proto.opset_import:
        if entry.domain == "ai.onnx":
            entry.domain = ""
    g.name = "graph"


# Names the code torch.fx generates may use besides the graph's own (its globals, e.g. ``torch``,
# ``inf``, are added per module): Python builtins fx writes for call_function targets.
_FX_BUILTINS = {"getattr", "self", "None", "True", "False", "slice", "Ellipsis"}
_FX_AST = tuple(getattr(ast, n) for n in (
    "Module", "FunctionDef", "arguments", "arg", "Assign", "AnnAssign", "Return", "Expr", "Pass", "Delete",
    "Call", "keyword", "Name", "Attribute", "Constant", "Tuple", "List", "Dict", "Subscript", "Slice",
    "Starred", "UnaryOp", "USub", "UAdd", "Load", "Store", "Del") if hasattr(ast, n))


def check_fx_source(src: str, globals_: dict | None = None) -> None:
    """Refuse fx-generated Python that does anything but call the graph's modules and functions.

    Allowed: assignments of calls on local names, ``self.<identifier>`` attributes,
    ``getattr(x, "<identifier>")`` with a literal identifier path, constants and containers of them;
    names must be arguments, locals, fx's globals or a few builtins. Injected code (``__import__``,
    conditional expressions, lambdas, comprehensions, other names) fails the check.
    """
    def refuse(why: str) -> None:
        raise HarnessError(f"the converted ONNX model's generated code {why}; refused",
                           field="model.checkpoint")

    try:
        tree = ast.parse(src)
    except SyntaxError:
        refuse("is not valid Python")
    allowed = set(_FX_BUILTINS) | set(globals_ or ())
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            allowed.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            allowed.add(node.id)
    for node in ast.walk(tree):
        if not isinstance(node, _FX_AST):
            refuse(f"contains a {type(node).__name__} expression")
        if isinstance(node, ast.Name) and node.id not in allowed:
            refuse(f"references the name {node.id[:60]!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            target = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(target, ast.Constant) and isinstance(target.value, str)
                    and all(_IDENT.match(p) for p in target.value.split("."))):
                refuse("calls getattr with a name that is not an identifier")
    if not any(isinstance(n, ast.FunctionDef) for n in tree.body):
        refuse("defines no forward")


@contextlib.contextmanager
def _fx_source_checked():
    """While converting, check every source torch.fx generates *before* it is compiled."""
    import torch.fx.graph_module as fxgm

    original = getattr(fxgm, "_exec_with_source", None)
    if original is None:  # a torch without this private hook: the check after conversion remains
        yield
        return

    def checked(src, globals, *args, **kwargs):
        check_fx_source(src, globals)
        return original(src, globals, *args, **kwargs)

    fxgm._exec_with_source = checked
    try:
        yield
    finally:
        fxgm._exec_with_source = original


def build_onnx(path: Path) -> nn.Module:
    """An ONNX network as a torch module through the submissions' sanitised path (onnx.load,
    :func:`sanitize_onnx`, onnx2torch with the torch.fx source checked); ``harness verify`` uses it."""
    return _build_onnx(Path(path))


def _build_onnx(path: Path) -> nn.Module:
    import onnx
    from onnx2torch import convert

    try:
        proto = onnx.load(str(path))
    except Exception as e:
        raise HarnessError(f"cannot read ONNX model: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}",
                           field="model.checkpoint")
    sanitize_onnx(proto)
    try:
        with _fx_source_checked():
            gm = convert(proto)
    except HarnessError:
        raise
    except Exception as e:
        raise HarnessError(f"cannot convert ONNX model: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}",
                           field="model.checkpoint")
    for n in gm.graph.nodes:
        if not _IDENT.match(n.name) or (n.op in ("call_module", "get_attr")
                                        and not all(_IDENT.match(p) for p in str(n.target).split("."))):
            raise HarnessError("the converted ONNX model has a node or module name that is not an identifier; "
                               "refused", field="model.checkpoint")
    check_fx_source(gm.code, gm.graph.python_code(root_module="self").globals)
    return gm


def load_model(sub: LoadedSubmission, *, input_shape: tuple[int, int, int], num_classes: int,
               device: torch.device, trust_code: bool = False, max_model_bytes: int | None = None) -> LoadedModel:
    """Verify the checkpoint's SHA-256, load it safely, wrap it, and check its outputs.

    ``trust_code`` allows TorchScript (unsafe: for the user's own models only).
    ``max_model_bytes`` caps the size of a ``state_dict`` architecture (default :data:`MAX_MODEL_BYTES`).
    """
    verify_files(sub)  # every file of the folder (ONNX external data too) matches its hash: harness.submission.manifest
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
        net = _build_state_dict_model(sub, path, max_model_bytes or MAX_MODEL_BYTES)
    elif fmt == "torchscript":
        net = _build_torchscript(path, trust_code)
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
    """A model must give finite logits of shape (N, num_classes) on inputs in [0, 1] (a first
    check on two noise inputs; every stage then checks every batch of real data)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, *model.input_shape), generator=gen).to(model.device)
    try:
        out = model.module(x)
    except HarnessError:
        raise
    except Exception as e:
        if is_out_of_memory(e):
            raise
        raise HarnessError(f"model fails on an input of shape {tuple(x.shape)}: {type(e).__name__}: {error_line(e)}")
    check_logits(out, 2, model.num_classes, stage="load, 2 random inputs")
