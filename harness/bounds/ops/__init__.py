"""Bound operators, one class per operator, and the table that maps fx nodes to them.

The interface is documented in :mod:`.base`. One module per operator family:

==================  ==========================================================================
``affine``          :class:`AffineOp`, the base of every affine op (exact rules)
``linear``          ``nn.Linear``/``F.linear``, ``nn.Conv2d``/``F.conv2d``
``normalization``   eval-mode ``nn.BatchNorm1d``/``2d``
``shape``           reshapes (``view``, ``flatten``, ...), identity, eval-mode dropout
``pooling``         average pooling, adaptive average pooling, ``mean``
``arith``           ``+ - * /`` and negation with constants; sums/differences of two tensors
``relu``            ReLU (relaxed)
``leaky_relu``      LeakyReLU with slope in [0, 1] (relaxed)
``maxpool``         ``nn.MaxPool2d``/``F.max_pool2d`` (relaxed)
==================  ==========================================================================

To add an operator: write one module here with one :class:`Op` subclass that declares its
targets (``modules``/``functions``/``methods``), ``from_node`` when it has arguments, and its
rules (``forward``, ``ibp``, ``backward``; plus ``needs_input_bounds``/``relax``/``loose`` when
its relaxation depends on input bounds, or derive from :class:`ElementwiseRelaxedOp` /
:class:`AffineOp`), decorate it with ``@register_op``, and add its module name to
``OP_MODULES`` below. Code outside this package (a plug-in, a test) registers an op with the
decorator alone. The graph builder and the IBP/CROWN drivers need no change.
"""
from __future__ import annotations

import importlib

from harness.core import plugins

from .base import (
    ElementwiseRelaxedOp,
    Getter,
    Op,
    Shape,
    Tensor,
    dot,
    flat_sum,
    is_registered_module,
    op_for_function,
    op_for_method,
    op_for_module,
    register_op,
    registered_ops,
    unregister_op,
)

#: the operator modules of this package, imported (and so registered) in this order
OP_MODULES = ("affine", "linear", "normalization", "shape", "pooling", "arith", "relu",
              "leaky_relu", "maxpool")

for _name in OP_MODULES:
    importlib.import_module(f"{__name__}.{_name}")

from .affine import AffineOp  # noqa: E402
from .arith import AddOp, ScaleShiftOp, SubOp  # noqa: E402
from .leaky_relu import LeakyReLUOp  # noqa: E402
from .linear import Conv2dOp, LinearOp  # noqa: E402
from .maxpool import MaxPool2dOp  # noqa: E402
from .normalization import BatchNormOp  # noqa: E402
from .pooling import AvgPool2dOp, MeanOp  # noqa: E402
from .relu import ReLUOp  # noqa: E402
from .shape import IdentityOp, ReshapeOp  # noqa: E402

# the installed plug-ins' operators (entry-point group ``robust_frontier.operators``: a function that
# calls register_op, or a module whose import does), after the built-in ones
plugins.load("operators")

__all__ = [
    "OP_MODULES", "Op", "AffineOp", "ElementwiseRelaxedOp", "register_op", "unregister_op",
    "registered_ops", "op_for_module", "op_for_function", "op_for_method",
    "is_registered_module", "Getter", "Shape", "Tensor", "dot", "flat_sum",
    "AddOp", "SubOp", "ScaleShiftOp", "LinearOp", "Conv2dOp", "BatchNormOp", "ReshapeOp",
    "IdentityOp", "AvgPool2dOp", "MeanOp", "ReLUOp", "LeakyReLUOp", "MaxPool2dOp",
]
