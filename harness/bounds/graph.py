"""Trace a model with torch.fx into a small graph of bound ops (see :mod:`.ops`).

Every fx node is put in one of four classes, using the values of one concrete forward pass
(batch of 2, inputs in [0, 1]):

* the **input** (the single placeholder);
* **perturbed** nodes: tensors that depend on the input's values. Each is looked up in the
  operator table of :mod:`.ops` (by module class, function or method name) and built by the op
  class's ``from_node(builder, node)``; a node with no entry raises
  ``HarnessError("unsupported operator X at node Y")``;
* **constants**: nodes that do not depend on the input (parameters, buffers such as the
  normalisation mean/std, arithmetic on them). They are re-evaluated from the live module each
  time an op reads them, so bounds follow training updates;
* **shape** nodes: Python values derived from the input's *shape* (``x.size(0)``). They may
  only feed the shape arguments of reshape-like ops (the recorded per-example output shape is
  used instead).

After building, the graph is run on a fresh batch of 3 and compared with the model itself; a
mismatch raises rather than producing bounds for a different function.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from harness.core.errors import HarnessError

from . import ops as O

_TRACE_BATCH = 2
_CHECK_BATCH = 3


@dataclass
class GNode:
    """One input-dependent node: ``op`` applied to the outputs of the nodes ``inputs``."""

    name: str
    op: Optional[O.Op]  # None for the input node
    inputs: list[int]
    shape: tuple  # per-example output shape
    numel: int = 0


@dataclass
class BoundGraph:
    nodes: list[GNode]
    output: int
    input_shape: tuple
    #: nodes whose bounds a relaxation needs (inputs of ops with ``needs_input_bounds``)
    needs_bounds: set = field(default_factory=set)
    #: node -> [(consumer, input position)] for the consumers that relax with its bounds
    relaxed_consumers: dict = field(default_factory=dict)
    ancestors: list = field(default_factory=list)  # per node: set of ancestor indices (incl. itself)

    def check_modes(self) -> None:
        for n in self.nodes[1:]:
            n.op.check()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals: list[Optional[torch.Tensor]] = [None] * len(self.nodes)
        vals[0] = x
        for i, n in enumerate(self.nodes[1:], start=1):
            vals[i] = n.op.forward(*(vals[j] for j in n.inputs))
        return vals[self.output]

    def relaxed_nodes(self) -> list[int]:
        """Nodes whose op relaxes with bounds on its inputs (ReLU, LeakyReLU, MaxPool2d, ...)."""
        return [i for i, n in enumerate(self.nodes) if n.op is not None and n.op.needs_input_bounds]

    def loose(self, i: int, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """Bool mask (like ``lower``) of the neurons of node ``i`` whose bounds some relaxation
        depends on (the union over the consumers that relax with them)."""
        mask = None
        for c, k in self.relaxed_consumers.get(i, ()):
            m = self.nodes[c].op.loose(k, lower, upper)
            mask = m if mask is None else mask | m
        return mask if mask is not None else torch.zeros_like(lower, dtype=torch.bool)


# --------------------------------------------------------------------------------------------
# tracing
# --------------------------------------------------------------------------------------------


def _is_onnx2torch(m: nn.Module) -> bool:
    return type(m).__module__.startswith("onnx2torch")


class _Tracer(fx.Tracer):
    """Default fx tracer, keeping as leaves onnx2torch's modules (they contain control flow) and
    every module class registered in the operator table (so a custom ``nn.Module`` can be an
    operator)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (_is_onnx2torch(m) or O.is_registered_module(m)
                or super().is_leaf_module(m, qualname))


def trace(model: nn.Module) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        return model
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is a user-facing error
        raise HarnessError(f"cannot trace the model with torch.fx for certified bounds: "
                           f"{type(e).__name__}: {e}")
    return fx.GraphModule(model, graph)


def _fetch_attr(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class _Recorder(fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n):
        v = super().run_node(n)
        self.values[n] = v
        return v


# --------------------------------------------------------------------------------------------
# building ops
# --------------------------------------------------------------------------------------------


def _target_name(n: fx.Node) -> str:
    t = n.target
    if n.op == "call_method":
        return f"Tensor.{t}"
    if isinstance(t, str):
        return t
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__name__", None) or repr(t)
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch"):
        return f"{'torch.nn.functional' if 'functional' in mod else 'torch'}.{name}"
    return name


class Builder:
    """Classifies the fx nodes and builds one op per input-dependent node by looking its target
    up in the operator table (:mod:`.ops`).

    It is also the context handed to ``Op.from_node(builder, node)``; the methods meant for op
    factories are: :meth:`module`, :meth:`value`, :meth:`is_pert`, :meth:`single_input`,
    :meth:`single_pert`, :meth:`arg`, :meth:`check_kwargs`, :meth:`literal`,
    :meth:`const_value`, :meth:`const_getter`, :meth:`per_example`, :meth:`shape_args_ok`,
    :meth:`is_onnx` and :meth:`unsupported`.
    """

    def __init__(self, gm: fx.GraphModule, values: dict, batch: int):
        self.gm = gm
        self.values = values
        self.batch = batch
        self.kind: dict[fx.Node, str] = {}
        self.index: dict[fx.Node, int] = {}
        self.nodes: list[GNode] = []

    # ---- helpers for op factories --------------------------------------------------------------

    def unsupported(self, n: fx.Node, what: Optional[str] = None, why: str = ""):
        """Raise ``HarnessError("unsupported operator WHAT at node N (WHY)")``."""
        if what is None:
            if n.op == "call_module":
                what = type(self.gm.get_submodule(n.target)).__name__
            else:
                what = _target_name(n)
        extra = f" ({why})" if why else ""
        where = f" (module {n.target!r})" if n.op == "call_module" and n.target != n.name else ""
        raise HarnessError(f"unsupported operator {what} at node {n.name}{where}{extra}")

    def module(self, n: fx.Node) -> nn.Module:
        """The submodule called by a ``call_module`` node."""
        return self.gm.get_submodule(n.target)

    def is_onnx(self, n: fx.Node) -> bool:
        return n.op == "call_module" and _is_onnx2torch(self.module(n))

    def value(self, a: fx.Node):
        """The value of node ``a`` in the recorded forward pass (batch of 2)."""
        return self.values[a]

    def is_pert(self, a) -> bool:
        """Whether ``a`` is an input-dependent tensor node."""
        return isinstance(a, fx.Node) and self.kind.get(a) in ("input", "pert")

    def single_pert(self, n: fx.Node, x) -> fx.Node:
        """Check that ``x`` is the only input-dependent argument of ``n``; return it."""
        if not self.is_pert(x):
            self.unsupported(n, why="first argument is not the traced tensor")
        for a in n.all_input_nodes:
            if a is not x and self.kind[a] in ("input", "pert"):
                self.unsupported(n, why="more than one input-dependent argument")
        return x

    def single_input(self, n: fx.Node) -> fx.Node:
        """The input-dependent first argument of ``n``, which must be its only one (a module
        call must take exactly one argument)."""
        if not n.args or (n.op == "call_module" and len(n.args) != 1):
            self.unsupported(n, why="unexpected call signature")
        return self.single_pert(n, n.args[0])

    def arg(self, n: fx.Node, pos: int, name: str, default):
        """Argument ``pos`` of ``n``, or keyword ``name``, or ``default``."""
        if len(n.args) > pos:
            return n.args[pos]
        return n.kwargs.get(name, default)

    def check_kwargs(self, n: fx.Node, allowed) -> None:
        bad = set(n.kwargs) - set(allowed)
        if bad:
            self.unsupported(n, why=f"unsupported arguments {sorted(bad)}")

    def literal(self, a):
        """The value of a hyper-parameter argument (a literal or a constant node)."""
        if isinstance(a, fx.Node):
            if self.kind[a] != "const":
                raise HarnessError(f"unsupported operator {a.name}: a hyper-parameter computed "
                                   f"from the input at node {a.name}")
            return self.eval_const(a)
        return a


    def const_value(self, a):
        """The current value of a constant argument (node or literal)."""
        return self.eval_const(a) if isinstance(a, fx.Node) else a

    def const_getter(self, a):
        """A zero-argument callable returning the live value of a constant argument."""
        if isinstance(a, fx.Node):
            if self.kind[a] != "const":
                raise AssertionError(a)
            return lambda: self.eval_const(a)
        return lambda: a

    def eval_const(self, n: fx.Node):
        if n.op == "get_attr":
            return _fetch_attr(self.gm, n.target)
        args = fx.node.map_arg(n.args, self.eval_const)
        kwargs = fx.node.map_arg(n.kwargs, self.eval_const)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "call_module":
            return self.gm.get_submodule(n.target)(*args, **kwargs)
        raise AssertionError(n.op)

    def per_example(self, getter, out_ndim: int):
        """Wrap a constant getter so that its value broadcasts per example (no batch dim)."""

        def get():
            c = getter()
            if torch.is_tensor(c) and c.dim() == out_ndim + 1:
                c = c.reshape(c.shape[1:])  # the batch dim was checked to be 1
            return c

        return get

    def shape_args_ok(self, n: fx.Node, tensor_arg: fx.Node) -> None:
        """Other arguments of a reshape must be shape nodes, constants or literals."""
        for a in n.all_input_nodes:
            if a is tensor_arg:
                continue
            if self.kind[a] in ("input", "pert"):
                self.unsupported(n, why="reshape with an input-dependent shape")

    def shape_consumers_ok(self, n: fx.Node) -> None:
        for a in n.all_input_nodes:
            if self.kind[a] == "shape":
                self.unsupported(n, why="uses the input's shape")

    # ---- classification --------------------------------------------------------------------

    def run(self) -> BoundGraph:
        out_node = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if self.index:
                    raise HarnessError(f"the model takes more than one input (node {n.name}); "
                                       "certified bounds need a single image input")
                self.kind[n] = "input"
                v = self.values[n]
                self.index[n] = 0
                self.nodes.append(GNode(n.name, None, [], tuple(v.shape[1:]), math.prod(v.shape[1:])))
                continue
            if n.op == "output":
                out_node = n
                continue
            deps = [a for a in n.all_input_nodes]
            dep_kinds = {self.kind[a] for a in deps}
            v = self.values[n]
            if n.op == "get_attr" or not (dep_kinds & {"input", "pert", "shape"}):
                self.kind[n] = "const"
                continue
            if not torch.is_tensor(v):
                if dep_kinds & {"input", "pert", "shape"} and self._is_shape_op(n):
                    self.kind[n] = "shape"
                    continue
                self.unsupported(n, why="non-tensor result computed from the input")
            if not (dep_kinds & {"input", "pert"}):
                self.unsupported(n, why="builds a tensor from the input's shape")
            if v.dim() == 0 or v.shape[0] != self.batch:
                self.unsupported(n, why="mixes the batch dimension")
            if not v.is_floating_point():
                self.unsupported(n, why="non-float result")
            self.kind[n] = "pert"
            self.build(n)
        if out_node is None:
            raise HarnessError("traced graph has no output")
        res = out_node.args[0]
        if not (isinstance(res, fx.Node) and self.is_pert(res)):
            raise HarnessError("the model's output must be a single tensor computed from the input "
                               f"(got {type(res).__name__} at node {out_node.name})")
        if len(self.nodes[self.index[res]].shape) != 1:
            raise HarnessError(f"the model's output must be logits of shape (B, K), got per-example "
                               f"shape {self.nodes[self.index[res]].shape}")
        g = BoundGraph(self.nodes, self.index[res], self.nodes[0].shape)
        for i, nd in enumerate(g.nodes):
            if nd.op is not None and nd.op.needs_input_bounds:
                for k, j in enumerate(nd.inputs):
                    g.needs_bounds.add(j)
                    g.relaxed_consumers.setdefault(j, []).append((i, k))
        anc: list[set] = []
        for i, nd in enumerate(g.nodes):
            s = {i}
            for j in nd.inputs:
                s |= anc[j]
            anc.append(s)
        g.ancestors = anc
        return g

    def _is_shape_op(self, n: fx.Node) -> bool:
        if n.op == "call_method" and n.target in ("size", "dim", "numel"):
            return True
        if n.op == "call_function" and n.target in (getattr, operator.getitem, operator.mul,
                                                    operator.add, operator.sub,
                                                    operator.floordiv, len):
            return True
        return False

    # ---- op construction: one table look-up ----------------------------------------------------

    def build(self, n: fx.Node) -> None:
        if n.op == "call_module":
            if len(n.args) < 1 or n.kwargs:
                self.shape_consumers_ok(n)
                self.unsupported(n, why="unexpected call signature")
            cls = O.op_for_module(self.module(n))
        elif n.op == "call_function":
            cls = O.op_for_function(n.target)
        elif n.op == "call_method":
            cls = O.op_for_method(n.target)
        else:
            cls = None
        if cls is None:
            self.unsupported(n, what=None if n.op.startswith("call_") else n.op)
        if n.op == "call_module" or not cls.shape_args:
            self.shape_consumers_ok(n)
        op, inputs = cls.from_node(self, n)
        self.add_node(n, op, inputs)

    def add_node(self, n: fx.Node, op: O.Op, inputs: list[fx.Node]):
        v = self.values[n]
        op.name = n.name
        op.in_shapes = [tuple(self.values[a].shape[1:]) for a in inputs]
        op.out_shape = tuple(v.shape[1:])
        idx = len(self.nodes)
        self.nodes.append(GNode(n.name, op, [self.index[a] for a in inputs], op.out_shape,
                                math.prod(op.out_shape)))
        self.index[n] = idx


def build_graph(model: nn.Module, input_shape, device=None, dtype=None) -> BoundGraph:
    """Trace ``model`` and build its :class:`BoundGraph`; check it reproduces the model."""
    for name, m in model.named_modules():
        if m.training and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
            raise HarnessError(f"{type(m).__name__} {name or '(root)'} is in training mode; certified "
                               "bounds need the model in eval mode (model.eval())")
    gm = trace(model)
    if device is None or dtype is None:
        p = next(iter(list(model.parameters()) + list(model.buffers())), None)
        device = device or (p.device if p is not None else torch.device("cpu"))
        dtype = dtype or (p.dtype if (p is not None and p.is_floating_point()) else torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((_TRACE_BATCH, *input_shape), generator=gen).to(device=device, dtype=dtype)
    rec = _Recorder(gm)
    try:
        with torch.no_grad():
            rec.run(x)
    except HarnessError:
        raise
    except Exception as e:  # noqa: BLE001
        raise HarnessError(f"the model fails on an input of shape {tuple(x.shape)}: "
                           f"{type(e).__name__}: {e}")
    g = Builder(gm, rec.values, _TRACE_BATCH).run()
    x3 = torch.rand((_CHECK_BATCH, *input_shape), generator=gen).to(device=device, dtype=dtype)
    with torch.no_grad():
        want = model(x3)
        got = g.forward(x3)
    if not torch.is_tensor(want) or want.shape != got.shape or not torch.allclose(
            got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(want.abs().max()))):
        diff = (got - want).abs().max().item() if (torch.is_tensor(want) and want.shape == got.shape) else "shape"
        raise HarnessError(f"the traced bound graph does not reproduce the model's output "
                           f"(max difference {diff}); refusing to compute bounds")
    return g
