"""Trace a model with torch.fx into a small graph of bound ops (see :mod:`.ops`).

Every fx node is put in one of four classes, using the values of one concrete forward pass
(batch of 2, inputs in [0, 1]):

* the **input** (the single placeholder);
* **perturbed** nodes: tensors that depend on the input's values. Each must map to a supported
  op, else ``HarnessError("unsupported operator X at node Y")``;
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
import torch.nn.functional as F

from ..errors import HarnessError
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
    pre_relu: set = field(default_factory=set)  # indices of nodes that feed a ReLU
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

    def relu_nodes(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if isinstance(n.op, O.ReLUOp)]


# --------------------------------------------------------------------------------------------
# tracing
# --------------------------------------------------------------------------------------------


def _is_onnx2torch(m: nn.Module) -> bool:
    return type(m).__module__.startswith("onnx2torch")


class _Tracer(fx.Tracer):
    """Default fx tracer, keeping onnx2torch's modules as leaves (they contain control flow)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_onnx2torch(m) or super().is_leaf_module(m, qualname)


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

_RELU_FUNCS = {F.relu, torch.relu, getattr(torch, "relu_", None), getattr(F, "relu_", None)}
_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub, torch.subtract}
_MUL = {operator.mul, operator.imul, torch.mul, torch.multiply}
_DIV = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, torch.divide}
_NEG = {operator.neg, torch.neg, torch.negative}
_FLATTEN = {torch.flatten}
_RESHAPE = {torch.reshape}
_LINEAR = {F.linear, torch._C._nn.linear}
_CONV2D = {F.conv2d, torch.conv2d}
_AVGPOOL = {F.avg_pool2d, torch._C._nn.avg_pool2d}
_ADAPTIVE_AVGPOOL = {F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d}
_DROPOUT = {F.dropout}
_MEAN = {torch.mean}
_METHOD_BINARY = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul",
                  "mul_": "mul", "div": "div", "div_": "div", "__add__": "add",
                  "__sub__": "sub", "__mul__": "mul", "__truediv__": "div", "__radd__": "radd",
                  "__rsub__": "rsub", "__rmul__": "rmul", "__rtruediv__": "rdiv"}


def _pair(v) -> tuple:
    if isinstance(v, (tuple, list)):
        return tuple(int(a) for a in (v if len(v) == 2 else (v[0], v[0])))
    return (int(v), int(v))


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


class _Builder:
    def __init__(self, gm: fx.GraphModule, values: dict, batch: int):
        self.gm = gm
        self.values = values
        self.batch = batch
        self.kind: dict[fx.Node, str] = {}
        self.index: dict[fx.Node, int] = {}
        self.nodes: list[GNode] = []

    # ---- helpers -----------------------------------------------------------------------------

    def unsupported(self, n: fx.Node, what: Optional[str] = None, why: str = ""):
        if what is None:
            if n.op == "call_module":
                what = type(self.gm.get_submodule(n.target)).__name__
            else:
                what = _target_name(n)
        extra = f" ({why})" if why else ""
        where = f" (module {n.target!r})" if n.op == "call_module" and n.target != n.name else ""
        raise HarnessError(f"unsupported operator {what} at node {n.name}{where}{extra}")

    def is_pert(self, a) -> bool:
        return isinstance(a, fx.Node) and self.kind.get(a) in ("input", "pert")

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

    def add_node(self, n: fx.Node, op: O.Op, inputs: list[fx.Node]):
        v = self.values[n]
        op.name = n.name
        op.in_shapes = [tuple(self.values[a].shape[1:]) for a in inputs]
        op.out_shape = tuple(v.shape[1:])
        idx = len(self.nodes)
        self.nodes.append(GNode(n.name, op, [self.index[a] for a in inputs], op.out_shape,
                                math.prod(op.out_shape)))
        self.index[n] = idx

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
            if isinstance(nd.op, O.ReLUOp):
                g.pre_relu.add(nd.inputs[0])
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

    # ---- op construction -------------------------------------------------------------------

    def build(self, n: fx.Node) -> None:
        if n.op == "call_module":
            return self.build_module(n)
        if n.op == "call_function":
            return self.build_function(n)
        if n.op == "call_method":
            return self.build_method(n)
        self.unsupported(n, what=n.op)

    def _single_pert(self, n: fx.Node, x) -> fx.Node:
        if not self.is_pert(x):
            self.unsupported(n, why="first argument is not the traced tensor")
        for a in n.all_input_nodes:
            if a is not x and self.kind[a] in ("input", "pert"):
                self.unsupported(n, why="more than one input-dependent argument")
        return x

    def build_module(self, n: fx.Node) -> None:
        m = self.gm.get_submodule(n.target)
        self.shape_consumers_ok(n)
        if len(n.args) < 1 or n.kwargs:
            self.unsupported(n, why="unexpected call signature")
        x = n.args[0]
        tname = type(m).__name__
        if _is_onnx2torch(m):
            return self.build_onnx(n, m, tname)
        if len(n.args) != 1:
            self.unsupported(n, why="unexpected call signature")
        self._single_pert(n, x)
        if type(m) is nn.Linear:
            op = O.LinearOp(lambda m=m: m.weight, lambda m=m: m.bias)
        elif type(m) is nn.Conv2d:
            op = self.conv_op(n, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups,
                              m.padding_mode, const=False, module=m)
        elif isinstance(m, nn.ReLU):
            op = O.ReLUOp()
        elif type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            if m.running_mean is None or m.running_var is None:
                self.unsupported(n, tname, "batch norm without running statistics")
            op = O.BatchNormOp(m)
            if m.training:
                op.name = n.name
                op.check()
        elif type(m) in (nn.Flatten, nn.Unflatten):
            op = O.ReshapeOp()
        elif type(m) is nn.AvgPool2d:
            op = O.AvgPool2dOp(_pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size),
                               _pair(m.padding), m.ceil_mode, m.count_include_pad,
                               m.divisor_override)
        elif type(m) is nn.AdaptiveAvgPool2d:
            op = self.adaptive_op(n, x, tname)
        elif type(m) is nn.Identity:
            op = O.IdentityOp()
        elif type(m) in (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout):
            op = O.IdentityOp(m, kind=tname)
            if m.training:
                op.name = n.name
                op.check()
        else:
            self.unsupported(n)
        self.add_node(n, op, [x])

    def build_onnx(self, n: fx.Node, m: nn.Module, tname: str) -> None:
        x = n.args[0]
        if tname == "OnnxBinaryMathOperation":
            if getattr(m, "broadcast", None) == 1 and getattr(m, "axis", None) is not None:
                self.unsupported(n, tname, "old-style broadcast")
            fn = m.math_op_function
            kind = {torch.add: "add", torch.sub: "sub", torch.mul: "mul"}.get(fn)
            if kind is None and getattr(fn, "__name__", "") == "_onnx_div":
                kind = "div"
            if kind is None or len(n.args) != 2:
                self.unsupported(n, tname)
            return self.build_binary(n, kind, n.args[0], n.args[1], what=tname)
        self._single_pert(n, x)
        if tname in ("OnnxReshape", "OnnxFlatten"):
            self.shape_args_ok(n, x)
            op = O.ReshapeOp()
        elif tname == "OnnxCopyIdentity" and len(n.args) == 1:
            op = O.IdentityOp(kind=tname)
        elif tname in ("OnnxGlobalAveragePool", "OnnxGlobalAveragePoolWithKnownInputShape"):
            nd = self.values[x].dim()
            op = O.MeanOp(range(2, nd), keepdim=True)
        else:
            self.unsupported(n, tname)
        self.add_node(n, op, [x])

    def conv_op(self, n, weight, bias, stride, padding, dilation, groups, padding_mode="zeros",
                const=True, module=None):
        if padding_mode != "zeros":
            self.unsupported(n, why=f"padding_mode={padding_mode!r}")
        if module is not None:
            wg, bg = (lambda: module.weight), (lambda: module.bias)
            w = module.weight
        else:
            wg, bg = weight, bias
            w = wg()
        if not torch.is_tensor(w) or w.dim() != 4:
            self.unsupported(n, why="weight is not a 4-d constant")
        kh, kw = w.shape[2:]
        dilation = _pair(dilation)
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                tot = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
                if tot[0] % 2 or tot[1] % 2:
                    self.unsupported(n, why="asymmetric 'same' padding")
                padding = (tot[0] // 2, tot[1] // 2)
            else:
                self.unsupported(n, why=f"padding={padding!r}")
        return O.Conv2dOp(wg, bg, _pair(stride), _pair(padding), dilation, int(groups))

    def adaptive_op(self, n, x, what):
        h, w = self.values[x].shape[2:]
        oh, ow = self.values[n].shape[2:]
        if h % oh or w % ow:
            self.unsupported(n, what, "adaptive pooling to a size that does not divide the input")
        k = (h // oh, w // ow)
        return O.AvgPool2dOp(k, k, (0, 0), False, True, None)

    def _arg(self, n, pos, name, default):
        if len(n.args) > pos:
            return n.args[pos]
        return n.kwargs.get(name, default)

    def _check_kwargs(self, n, allowed):
        bad = set(n.kwargs) - set(allowed)
        if bad:
            self.unsupported(n, why=f"unsupported arguments {sorted(bad)}")

    def build_function(self, n: fx.Node) -> None:
        t = n.target
        args = n.args
        if t in _RELU_FUNCS:
            self._check_kwargs(n, ("inplace",))
            self.shape_consumers_ok(n)
            self._single_pert(n, args[0])
            return self.add_node(n, O.ReLUOp(), [args[0]])
        for group, kind in ((_ADD, "add"), (_SUB, "sub"), (_MUL, "mul"), (_DIV, "div")):
            if t in group:
                self._check_kwargs(n, ())
                if len(args) != 2:
                    self.unsupported(n, why="unexpected call signature")
                return self.build_binary(n, kind, args[0], args[1])
        if t in _NEG:
            self.shape_consumers_ok(n)
            self._single_pert(n, args[0])
            return self.add_node(n, O.ScaleShiftOp("neg", lambda: -1.0, None), [args[0]])
        if t in _FLATTEN or t in _RESHAPE:
            x = self._single_pert(n, args[0])
            self.shape_args_ok(n, x)
            return self.add_node(n, O.ReshapeOp(), [x])
        if t in _LINEAR:
            self._check_kwargs(n, ("weight", "bias"))
            self.shape_consumers_ok(n)
            x = self._single_pert(n, args[0])
            w = self.const_getter(self._arg(n, 1, "weight", None))
            b = self.const_getter(self._arg(n, 2, "bias", None))
            return self.add_node(n, O.LinearOp(w, b), [x])
        if t in _CONV2D:
            self.shape_consumers_ok(n)
            x = self._single_pert(n, args[0])
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            self._check_kwargs(n, names[1:])
            vals = [self._arg(n, i, nm, d) for i, (nm, d) in
                    enumerate(zip(names, (None, None, None, 1, 0, 1, 1)))]
            op = self.conv_op(n, self.const_getter(vals[1]), self.const_getter(vals[2]),
                              *[self.eval_literal(v) for v in vals[3:]])
            return self.add_node(n, op, [x])
        if t in _AVGPOOL:
            self.shape_consumers_ok(n)
            x = self._single_pert(n, args[0])
            names = ("input", "kernel_size", "stride", "padding", "ceil_mode",
                     "count_include_pad", "divisor_override")
            self._check_kwargs(n, names[1:])
            v = [None] + [self.eval_literal(self._arg(n, i, nm, d)) for i, (nm, d) in
                          enumerate(zip(names, (None, None, None, 0, False, True, None))) if i]
            k = _pair(v[1])
            stride = k if v[2] is None or (isinstance(v[2], (list, tuple)) and len(v[2]) == 0) else _pair(v[2])
            if self.values[x].dim() != 4:
                self.unsupported(n, why="avg_pool2d on a non-4d tensor")
            op = O.AvgPool2dOp(k, stride, _pair(v[3]), bool(v[4]), bool(v[5]), v[6])
            return self.add_node(n, op, [x])
        if t in _ADAPTIVE_AVGPOOL:
            self.shape_consumers_ok(n)
            x = self._single_pert(n, args[0])
            if self.values[x].dim() != 4:
                self.unsupported(n, why="adaptive_avg_pool2d on a non-4d tensor")
            return self.add_node(n, self.adaptive_op(n, x, None), [x])
        if t in _DROPOUT:
            x = self._single_pert(n, args[0])
            self.shape_consumers_ok(n)
            training = self.eval_literal(self._arg(n, 2, "training", True))
            if training:
                self.unsupported(n, why="dropout with training=True")
            return self.add_node(n, O.IdentityOp(kind="dropout"), [x])
        if t in _MEAN:
            return self.build_mean(n, args[0], self._arg(n, 1, "dim", None),
                                   self._arg(n, 2, "keepdim", False))
        self.unsupported(n)

    def build_method(self, n: fx.Node) -> None:
        t = n.target
        args = n.args
        if t in ("relu", "relu_"):
            self.shape_consumers_ok(n)
            self._single_pert(n, args[0])
            return self.add_node(n, O.ReLUOp(), [args[0]])
        if t in _METHOD_BINARY:
            self._check_kwargs(n, ())
            if len(args) != 2:
                self.unsupported(n, why="unexpected call signature")
            kind = _METHOD_BINARY[t]
            if kind.startswith("r"):
                return self.build_binary(n, kind[1:], args[1], args[0])
            return self.build_binary(n, kind, args[0], args[1])
        if t in ("view", "reshape", "flatten"):
            x = self._single_pert(n, args[0])
            self.shape_args_ok(n, x)
            return self.add_node(n, O.ReshapeOp(), [x])
        if t in ("contiguous", "clone"):
            x = self._single_pert(n, args[0])
            return self.add_node(n, O.IdentityOp(kind=t), [x])
        if t == "neg":
            x = self._single_pert(n, args[0])
            return self.add_node(n, O.ScaleShiftOp("neg", lambda: -1.0, None), [x])
        if t == "mean":
            return self.build_mean(n, args[0], self._arg(n, 1, "dim", None),
                                   self._arg(n, 2, "keepdim", False))
        self.unsupported(n)

    def build_mean(self, n, x, dim, keepdim):
        self._single_pert(n, x)
        self._check_kwargs(n, ("dim", "keepdim"))
        dim = self.eval_literal(dim)
        nd = self.values[x].dim()
        if dim is None:
            self.unsupported(n, why="mean over the batch dimension")
        dims = [dim] if isinstance(dim, int) else list(dim)
        dims = [d % nd for d in dims]
        if 0 in dims:
            self.unsupported(n, why="mean over the batch dimension")
        self.add_node(n, O.MeanOp(dims, bool(self.eval_literal(keepdim))), [x])

    def eval_literal(self, a):
        if isinstance(a, fx.Node):
            if self.kind[a] != "const":
                raise HarnessError(f"unsupported operator {a.name}: a hyper-parameter computed "
                                   f"from the input at node {a.name}")
            return self.eval_const(a)
        return a

    def build_binary(self, n: fx.Node, kind: str, a, b, what: Optional[str] = None) -> None:
        self.shape_consumers_ok(n)
        pa, pb = self.is_pert(a), self.is_pert(b)
        out_shape = tuple(self.values[n].shape)
        if pa and pb:
            if tuple(self.values[a].shape) != out_shape or tuple(self.values[b].shape) != out_shape:
                self.unsupported(n, what, "operands of different shapes")
            if kind == "add":
                return self.add_node(n, O.AddOp(), [a, b])
            if kind == "sub":
                return self.add_node(n, O.SubOp(), [a, b])
            self.unsupported(n, what, f"{kind} of two input-dependent tensors")
        x, c, x_first = (a, b, True) if pa else (b, a, False)
        if tuple(self.values[x].shape) != out_shape:
            self.unsupported(n, what, "a constant operand broadcasts the input-dependent tensor")
        nd = len(out_shape)
        cval = self.eval_const(c) if isinstance(c, fx.Node) else c
        if torch.is_tensor(cval):
            if cval.dim() > nd or (cval.dim() == nd and cval.shape[0] != 1):
                self.unsupported(n, what, "constant with a batch dimension")
        elif not isinstance(cval, (int, float, bool)):
            self.unsupported(n, what, f"constant operand of type {type(cval).__name__}")
        get = self.per_example(self.const_getter(c), nd - 1)
        if kind == "add":
            op = O.ScaleShiftOp("add", None, get)
        elif kind == "sub" and x_first:
            op = O.ScaleShiftOp("sub", None, lambda: -get())
        elif kind == "sub":
            op = O.ScaleShiftOp("rsub", lambda: -1.0, get)
        elif kind == "mul":
            op = O.ScaleShiftOp("mul", get, None)
        elif kind == "div" and x_first:
            op = O.ScaleShiftOp("div", lambda: 1.0 / get(), None)
        else:
            self.unsupported(n, what, "division by an input-dependent tensor")
        self.add_node(n, op, [x])


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
    g = _Builder(gm, rec.values, _TRACE_BATCH).run()
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
