"""The bound-operator interface and the operator table (registry).

Every input-dependent node of a traced model becomes one :class:`Op`. An op class declares

*which fx nodes it handles* (class attributes; read from the class itself, never inherited):

``modules``
    ``nn.Module`` classes for ``call_module`` nodes, matched by exact type (a subclass may
    override ``forward``); a string names an onnx2torch leaf module class. A registered module
    class is kept as a leaf by the tracer, so a custom ``nn.Module`` can be an operator.
``functions``
    ``call_function`` targets (``F.relu``, ``operator.add``, ...);
``methods``
    ``call_method`` names (``"relu"``, ``"view"``, ...);

*how it is built*:

``from_node(builder, node) -> (op, inputs)``
    a classmethod that reads the node's arguments through the builder
    (:class:`harness.bounds.graph.Builder`: recorded values, literals, live constants, argument
    checks, ``unsupported``) and returns the op and its input-dependent fx inputs. It may
    return an op of another class (``x + c`` is a :class:`ScaleShiftOp`, ``x + y`` an
    :class:`AddOp`) and raises ``builder.unsupported(...)`` for forms it does not cover;

*its bound rules* (per-example shapes ``in_shapes``/``out_shape`` are set by the builder; the
batch dimension is never included):

``forward(*xs)``
    the concrete computation (checks that the traced graph reproduces the model);
``ibp(*intervals)``, ``ibp_flags(flags)``
    interval bound propagation: elementwise bounds ``(lower, upper)`` on each input give
    elementwise bounds on the output; ``ibp_flags`` says whether the result is still *exact*
    (each bound attained) and *indep* (the value set is the whole product box), from the
    inputs' ``(exact, indep)`` flags. Flags only decide where CROWN may skip a refinement;
    claiming ``False`` is always safe;
``needs_input_bounds``
    True when the linear relaxation depends on bounds of the inputs (pre-activation bounds):
    the drivers then compute those bounds (IBP, tightened by CROWN for ``method="crown"``)
    and pass ``relax(in_bounds)`` to ``backward``;
``relax(in_bounds)``, ``loose(k, lower, upper)``
    the relaxation data built from the bounds ``[(lower, upper), ...]`` of the inputs; and
    which neurons of input ``k`` the relaxation is sensitive to (full CROWN tightens only
    those, e.g. unstable ReLU neurons; the default is all of them);
``backward(lA, uA, relax)``
    the CROWN step: the bound being built is ``lA . out + lbias`` (a lower bound) and
    ``uA . out + ubias`` (an upper bound), ``lA``/``uA`` of shape ``(B, S, *out_shape)``;
    return ``[(lA_k, uA_k) per input], lbias_add, ubias_add`` (biases ``(B, S)`` or None)
    such that the bound stays valid one node further back. ``None`` means "not requested".

Adding an operator = one module with one class decorated with :func:`register_op` (and, for
a module in this package, one entry in ``OP_MODULES`` in ``ops/__init__.py``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch
import torch.nn as nn

from harness.core.errors import HarnessError

if TYPE_CHECKING:  # pragma: no cover
    import torch.fx as fx

    from ..graph import Builder

Tensor = torch.Tensor
Getter = Callable[[], object]
Shape = tuple


def flat_sum(t: Tensor) -> Tensor:
    """Sum a (B, S, ...) tensor over everything after the first two dimensions."""
    return t.reshape(t.shape[0], t.shape[1], -1).sum(-1)


def dot(A: Tensor, c) -> Tensor:
    """``sum(A * c)`` over the per-example dims of ``A`` (B, S, *shape), for ``c`` a number or a
    tensor broadcastable to ``shape``; dims along which ``c`` is constant are summed first."""
    if not torch.is_tensor(c) or c.dim() == 0:
        return flat_sum(A) * c
    nd = A.dim() - 2
    c = c.reshape((1,) * (nd - c.dim()) + tuple(c.shape))
    dims = [2 + d for d in range(nd) if c.shape[d] == 1 and A.shape[2 + d] != 1]
    if dims:
        A = A.sum(dim=dims, keepdim=True)
    return flat_sum(A * c)


def bias_dot(A: Tensor, b: Tensor) -> Tensor:
    """``A . b`` (B, S) for coefficients ``A`` (B, S, *shape) and a per-example ``b`` (B, *shape)."""
    B = A.shape[0]
    return A.reshape(B, A.shape[1], -1).bmm(b.reshape(B, -1, 1)).squeeze(-1)


def pair(v) -> tuple:
    if isinstance(v, (tuple, list)):
        return tuple(int(a) for a in (v if len(v) == 2 else (v[0], v[0])))
    return (int(v), int(v))


class Op:
    """Base class: one operator node with its bound rules (see the module docstring)."""

    kind = "op"
    #: fx targets handled by this class (not inherited; see :func:`register_op`)
    modules: tuple = ()
    functions: tuple = ()
    methods: tuple = ()
    #: the builder does not reject arguments computed from the input's shape (reshape-like ops,
    #: whose factory checks them itself)
    shape_args = False
    #: the relaxation depends on bounds of the inputs (pre-activation bounds)
    needs_input_bounds = False
    #: maps each coordinate to exactly one coordinate (elementwise affine / reshape)
    diagonal = False
    #: backward rule independent of the example (linear, no input bounds): CROWN shares it
    shared_backward = False
    #: the op has an optimisable lower relaxation (alpha-CROWN, :mod:`harness.bounds.alpha`):
    #: it then implements ``alpha_range``, ``alpha_init``, ``relax_alpha`` and ``unstable``
    optimisable = False

    def __init__(self) -> None:
        self.name = ""
        self.in_shapes: list[Shape] = []
        self.out_shape: Shape = ()

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_node(cls, b: "Builder", n: "fx.Node") -> tuple["Op", list]:
        """Default factory: a parameterless op of one input-dependent argument."""
        return cls(), [b.single_input(n)]

    def describe(self) -> str:
        return f"{self.kind} at node {self.name}"

    def check(self) -> None:
        """Raise if the operator is currently in a mode the rules do not cover."""

    # ---- rules -------------------------------------------------------------------------------

    def forward(self, *xs: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def ibp(self, *ivs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def ibp_flags(self, flags: Sequence[tuple[bool, bool]]) -> tuple[bool, bool]:
        """``(exact, indep)`` of the IBP output box from the inputs' flags."""
        return False, False

    def relax(self, in_bounds: Sequence[tuple[Tensor, Tensor]]):
        """Relaxation data for :meth:`backward`, from bounds on the inputs (only called when
        ``needs_input_bounds``)."""
        return None

    def loose(self, k: int, lower: Tensor, upper: Tensor) -> Tensor:
        """Bool mask (shaped like ``lower``) of the neurons of input ``k`` whose bounds the
        relaxation depends on; CROWN tightens only those."""
        return torch.ones_like(lower, dtype=torch.bool)

    def backward(self, lA, uA, relax):  # pragma: no cover
        raise NotImplementedError

    # ---- optimisable relaxation (alpha-CROWN), only when ``optimisable`` -----------------------

    def alpha_range(self) -> tuple[float, float]:  # pragma: no cover - abstract
        """``(lo, hi)``: every lower slope in this interval gives a sound relaxation."""
        raise NotImplementedError

    def alpha_init(self, in_bounds) -> Tensor:  # pragma: no cover - abstract
        """The non-optimised relaxation's lower slope, shaped like the input (B, *shape)."""
        raise NotImplementedError

    def unstable(self, in_bounds) -> Tensor:  # pragma: no cover - abstract
        """Bool mask (B, *shape) of the neurons whose lower slope is free."""
        raise NotImplementedError

    def relax_alpha(self, in_bounds, alpha_l: Tensor, alpha_u: Tensor):  # pragma: no cover
        """Relaxation data for :meth:`backward` with the lower slopes ``alpha_l`` (used by the
        lower-bound pass, ``lA``) and ``alpha_u`` (the upper-bound pass, ``uA``), each
        (B, S, *shape): one slope per neuron and per row of the specification."""
        raise NotImplementedError


class AlphaRelax(tuple):
    """Relaxation data with per-row lower slopes: ``(d_l_for_lA, d_l_for_uA, b_l, d_u, b_u)``,
    the slopes (B, S, *shape), the rest (B, *shape) (``b_l`` may be None)."""


class ElementwiseRelaxedOp(Op):
    """An elementwise function ``y = f(x)`` of one input with a linear relaxation
    ``d_l x + b_l <= f(x) <= d_u x + b_u`` on the input bounds ``[l, u]`` (neuron by neuron).

    Subclasses implement ``forward`` and ``relaxation(lo, hi) -> (d_l, b_l, d_u, b_u)`` (``b_l``
    or ``b_u`` may be None for 0). With ``monotone = True`` (f non-decreasing) the IBP rule is
    ``[f(l), f(u)]`` and keeps exactness.

    Backward (CROWN): for a lower bound, positive coefficients take the lower line and negative
    ones the upper line; for an upper bound the other way round. Each term then bounds
    ``A_i y_i`` on the right side for every ``x_i`` in ``[l_i, u_i]``, so the sum does.
    """

    needs_input_bounds = True
    monotone = False

    def relaxation(self, lo: Tensor, hi: Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def ibp(self, iv):
        if not self.monotone:  # pragma: no cover - a non-monotone subclass overrides ibp
            raise NotImplementedError
        lo, hi = iv
        return self.forward(lo), self.forward(hi)

    def ibp_flags(self, flags):
        return flags[0] if self.monotone else (False, False)

    def relax(self, in_bounds):
        return self.relaxation(*in_bounds[0])

    # alpha-CROWN: subclasses with a free lower slope set ``optimisable = True`` and define
    # ``alpha_range`` and ``unstable``; the lower line is ``alpha * x`` on unstable neurons
    # (``b_l`` must be None there), the non-optimised line elsewhere.

    def alpha_init(self, in_bounds):
        return self.relaxation(*in_bounds[0])[0]

    def unstable(self, in_bounds):
        lo, hi = in_bounds[0]
        return (lo < 0) & (hi > 0)

    def relax_alpha(self, in_bounds, alpha_l, alpha_u):
        d_l, b_l, d_u, b_u = self.relaxation(*in_bounds[0])
        free = self.unstable(in_bounds).unsqueeze(1)
        a, b = self.alpha_range()
        base = d_l.unsqueeze(1)
        # the slopes used are always clamped into the sound range; the gradient passes
        # straight through (clamp's own gradient is 0 at the bounds, where slopes start)
        dl_l = torch.where(free, _clamp_st(alpha_l, a, b), base)
        dl_u = torch.where(free, _clamp_st(alpha_u, a, b), base)
        return AlphaRelax((dl_l, dl_u, b_l, d_u, b_u))

    def backward(self, lA, uA, relax):
        if isinstance(relax, AlphaRelax):
            return self._backward_alpha(lA, uA, relax)
        d_l, b_l, d_u, b_u = relax
        gap = (d_u - d_l).unsqueeze(1)
        d_l = d_l.unsqueeze(1)
        la = ua = lb = ub = None
        # pos * d_l + neg * d_u == A * d_l + neg * (d_u - d_l)
        if lA is not None:
            neg = lA.clamp(max=0)
            la = lA * d_l + neg * gap
            lb = _add(_bias(neg, b_u), None if b_l is None else bias_dot(lA.clamp(min=0), b_l))
        if uA is not None:
            pos = uA.clamp(min=0)
            ua = uA * d_l + pos * gap
            ub = _add(_bias(pos, b_u), None if b_l is None else bias_dot(uA.clamp(max=0), b_l))
        return [(la, ua)], lb, ub

    def _backward_alpha(self, lA, uA, relax):
        """As :meth:`backward`, with one lower slope per neuron and per row (alpha-CROWN).
        Sound for the same reason: each row picks, per neuron, a lower line valid on
        ``[l, u]`` (any slope in ``alpha_range``) for the side its coefficient's sign needs."""
        dl_l, dl_u, b_l, d_u, b_u = relax
        d_u1 = d_u.unsqueeze(1)
        la = ua = lb = ub = None
        if lA is not None:
            pos, neg = lA.clamp(min=0), lA.clamp(max=0)
            la = pos * dl_l + neg * d_u1
            lb = _add(_bias(neg, b_u), None if b_l is None else bias_dot(pos, b_l))
        if uA is not None:
            pos, neg = uA.clamp(min=0), uA.clamp(max=0)
            ua = pos * d_u1 + neg * dl_u
            ub = _add(_bias(pos, b_u), None if b_l is None else bias_dot(neg, b_l))
        return [(la, ua)], lb, ub


def _clamp_st(t: Tensor, a: float, b: float) -> Tensor:
    return t + (t.clamp(a, b) - t).detach()


def _bias(A: Tensor, b: Optional[Tensor]) -> Optional[Tensor]:
    return None if b is None else bias_dot(A, b)


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None:
        return b
    return a if b is None else a + b


# --------------------------------------------------------------------------------------------
# the operator table
# --------------------------------------------------------------------------------------------

_MODULES: dict = {}    # nn.Module class (or onnx2torch class name) -> op class
_FUNCTIONS: dict = {}  # call_function target -> op class
_METHODS: dict = {}    # call_method name -> op class


def _targets(cls) -> list[tuple[dict, object]]:
    own = vars(cls)
    out = [(_MODULES, t) for t in own.get("modules", ())]
    out += [(_FUNCTIONS, t) for t in own.get("functions", ()) if t is not None]
    out += [(_METHODS, t) for t in own.get("methods", ())]
    return out


def register_op(cls: type) -> type:
    """Class decorator: add ``cls`` to the operator table under the targets it declares in its
    own ``modules``/``functions``/``methods``. A target already taken by another class raises."""
    if not (isinstance(cls, type) and issubclass(cls, Op)):
        raise TypeError(f"register_op needs a subclass of Op, got {cls!r}")
    targets = _targets(cls)
    if not targets:
        raise ValueError(f"{cls.__name__} declares no modules, functions or methods")
    for table, t in targets:
        other = table.get(t)
        if other is not None and other is not cls:
            raise ValueError(f"{t!r} is already handled by {other.__name__}")
    for table, t in targets:
        table[t] = cls
    return cls


def unregister_op(cls: type) -> None:
    """Remove every target that maps to ``cls`` (for tests and plug-ins)."""
    for table in (_MODULES, _FUNCTIONS, _METHODS):
        for t in [t for t, c in table.items() if c is cls]:
            del table[t]


def _is_onnx2torch(m: nn.Module) -> bool:
    return type(m).__module__.startswith("onnx2torch")


def op_for_module(m: nn.Module) -> Optional[type]:
    cls = _MODULES.get(type(m))
    if cls is None and _is_onnx2torch(m):
        cls = _MODULES.get(type(m).__name__)
    return cls


def op_for_function(target) -> Optional[type]:
    try:
        return _FUNCTIONS.get(target)
    except TypeError:  # unhashable target
        return None


def op_for_method(name: str) -> Optional[type]:
    return _METHODS.get(name)


def is_registered_module(m: nn.Module) -> bool:
    """Whether ``m``'s exact class is in the table (the tracer keeps such modules as leaves)."""
    return type(m) in _MODULES


def registered_ops() -> list[type]:
    """Every registered op class, once each, in registration order."""
    seen: dict = {}
    for table in (_MODULES, _FUNCTIONS, _METHODS):
        for c in table.values():
            seen.setdefault(c, None)
    return list(seen)


def unsupported_mode(op: Op, module: nn.Module) -> None:
    raise HarnessError(f"{type(module).__name__} at node {op.name} is in training mode; "
                       "certified bounds need the model in eval mode (model.eval())")
