"""Lipschitz-margin certification for L2 balls: a new certifier in one file.

``prepare`` bounds the L2 Lipschitz constant of every node of the model's traced graph
(:mod:`harness.bounds.graph`, the same operator table as IBP/CROWN) by composing per-layer
constants; ``run`` divides each example's logit margins by the Lipschitz constants of those
margins. One forward pass per example; the radius is a closed form (tolerance 0).

Soundness
---------
1. **Per node.** ``L_0 = 1`` for the input; a node ``op(u_1, ..., u_k)`` whose op is
   ``c_k``-Lipschitz in its k-th argument gets ``L <= sum_k c_k L(u_k)`` (triangle inequality
   through one argument at a time; a chain gives the product of the layers' constants, a
   residual ``x + y`` the sum of its branches'). The per-op constants ``c`` are *upper* bounds:

   - affine ``y = A x + b``: ``c = ||A||_2``, the spectral norm, bounded from above by
     - ``Linear``: exact, ``sqrt(lambda_max(W W^T))`` (Gram matrix of the smaller side, float64
       symmetric eigensolver); over 8192 on both sides, the Frobenius norm (>= ||W||_2);
     - ``Conv2d``: the smaller of two proved upper bounds, computed exactly:
       (i) *circular*: the zero-padded convolution (stride s, padding p, dilation d) is, on its
       output positions, a sub-sampling of the stride-1 convolution, which is the circular
       cross-correlation on the (H+2p) x (W+2p) torus applied to the zero-embedded input: no
       tap index wraps around, since every tap reads inside the padded frame. Embedding is an
       isometry and restriction has norm <= 1, so ``||A|| <= ||C||``; ``C`` is block-diagonal in
       the 2-D DFT basis, so ``||C||`` is the largest spectral norm of the ``c_out x c_in``
       matrices of the kernel's DFT over the torus frequencies (Sedghi, Gupta & Long 2019),
       computed per frequency (``rfft2``: the other half are conjugates, with equal norms);
       groups make ``C`` block-diagonal (max over groups);
       (ii) *patch*: each output position is ``W_mat @ patch`` with ``W_mat`` the
       ``c_out/g x c_in/g*kh*kw`` matrix, and ``sum over positions ||patch||^2 <= m ||x||^2``
       where ``m`` is the largest number of windows containing one input pixel, so
       ``||A|| <= ||W_mat||_2 sqrt(m)``. (i) is skipped when its cost exceeds ``fft_max_flops`` or its memory 512 MiB;
     - diagonal maps (eval-mode BatchNorm, the normalisation ``(x - mean) / std``, ``x * c``,
       ``-x``): ``max |scale|``, exact; reshapes, identities: 1;
     - averaging (AvgPool2d, adaptive average pooling, ``mean``): non-negative matrices, the
       Schur test ``||A||_2^2 <= ||A||_1 ||A||_inf`` (max column sum times max row sum, both
       computed with the op itself); exact for non-overlapping windows and global pooling;
     - any affine op with at most 1024 inputs (and 2^22 matrix entries): the exact spectral norm
       of its dense matrix, built column by column with the op itself (for convolutions and
       averaging, the smaller of this and the bounds above);
   - ReLU, LeakyReLU (slope a in [0, 1]): 1, as ``|max(u, a u) - max(v, a v)| <= |u - v|``;
   - MaxPool2d: ``sqrt(m)``, ``m`` as in (ii): ``|max_W u - max_W v| <= max_W |u - v|``, and
     summing the squares over windows counts each input at most ``m`` times (1 for
     non-overlapping windows, 4 for kernel 3 stride 2, 9 for kernel 3 stride 1);
   - ``x + y``, ``x - y`` of two input-dependent tensors: 1 in each argument.

   Any other operator is refused (:class:`Skip`). **Power iteration** (``power_iterations``
   steps of ``v <- A^T A v`` with the op's own forward and transpose, i.e. the real padding,
   stride and input shape) gives a *lower* estimate ``||A v|| / ||v|| <= ||A||`` of each affine
   op's norm: it is never used as the bound, only as a check (an upper bound below it means a
   bug and raises) and as a measure of tightness (``layers[*].power_iteration`` in the details).
2. **Margins.** For the predicted class ``c`` and ``j != c`` let ``g_j = f_c - f_j``. When the
   last node is a ``Linear`` layer ``f = W h + b``: ``g_j = (w_c - w_j) . h + b_c - b_j``, so by
   Cauchy-Schwarz ``|g_j(x') - g_j(x)| <= ||w_c - w_j||_2 L_h ||x' - x||_2``. Otherwise
   ``|g_j(x') - g_j(x)| = |(e_c - e_j) . (f(x') - f(x))| <= ||e_c - e_j||_2 L ||x' - x||_2 =
   sqrt(2) L ||x' - x||_2`` (Tsuzuku, Sato & Sugiyama 2018); the pairwise form is never larger,
   since ``||w_c - w_j|| = ||W^T (e_c - e_j)|| <= sqrt(2) ||W||``. Hence every ``g_j`` stays
   positive, and the prediction stays ``c``, on the open ball of radius
   ``r = min_j g_j(x) / K_cj`` (``K_cj`` the margin's constant). An example is certified at
   ``eps`` when it is correctly classified and ``eps < r`` (at ``||x' - x|| = r`` the bound
   only gives ``g_j >= 0``); its radius is ``r``, capped at ``eps_max`` (0 if misclassified).
   The threat model's ball is clipped to [0, 1]; the bound holds on the whole ball, hence on
   the clipped one.
3. **Linf is refused.** ``||d||_2 <= sqrt(n) ||d||_inf`` would turn ``r`` into a sound Linf
   radius ``r / sqrt(n)``, ``sqrt(n)`` times smaller (28x on MNIST, 55x on CIFAR, 388x on
   ImageNet at 224 px): a certificate that weak misrepresents the method, and IBP/CROWN are
   the Linf certifiers here.
4. **Floating point.** Constants are computed in float64 from the model's weights (exactly
   representable); the eigensolvers' relative error is of order n * 1e-16, and each layer's
   constant is multiplied by ``SAFETY = 1 + 1e-5``, which also covers the float32 rounding of
   a batch norm's ``gamma / sqrt(var + eps)``. As for IBP and CROWN, the certificate is about
   the network in exact arithmetic; the margins at ``x`` are the model's own logits.

``options`` (all optional): ``cache`` (shared with the bound certifiers: the traced graph is
reused), ``fft_max_flops`` (per convolution, default 2e10), ``power_iterations`` (default 20;
0 skips the check), ``pairwise`` (default True: the last-layer form of 2.).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch

from harness.core.errors import HarnessError
from harness.models.load import check_logits

from ..bounds import ops as O
from ..bounds.graph import BoundGraph, build_graph
from .base import Certifier, CertResult, Prepared, Skip

SAFETY = 1.0 + 1e-5
FFT_MAX_FLOPS = 2e10
FFT_MAX_ELEMENTS = 1 << 26  # float64 kernel entries on the torus (512 MiB), per convolution
POWER_ITERATIONS = 20
#: a power-iteration estimate above ``bound * POWER_CHECK`` is a bug (slack for float32 rounding)
POWER_CHECK = 1.0 + 1e-3
DENSE_MAX_INPUTS = 1024
DENSE_MAX_ENTRIES = 1 << 22  # 32 MiB of float64
GRAM_MAX_SIDE = 8192


# ---- spectral norms --------------------------------------------------------------------------

def spectral_norms(M: torch.Tensor, max_bytes: int = 1 << 28) -> torch.Tensor:
    """Largest singular value of each matrix of the batch ``M`` (..., m, n), real or complex,
    as ``sqrt(lambda_max)`` of the Gram matrix of the smaller side (Hermitian eigensolver),
    in chunks of at most ``max_bytes`` of Gram matrices."""
    m, n = M.shape[-2:]
    flat = M.reshape(-1, m, n)
    side = min(m, n)
    chunk = max(1, int(max_bytes // max(1, side * side * flat.element_size())))
    out = []
    for a in range(0, flat.shape[0], chunk):
        part = flat[a:a + chunk]
        G = part @ part.mH if m <= n else part.mH @ part
        out.append(torch.linalg.eigvalsh(G)[..., -1].clamp_min(0).sqrt())
    return torch.cat(out).reshape(M.shape[:-2]) if out else M.new_zeros(M.shape[:-2]).real


def window_multiplicity(n_in: int, n_out: int, k: int, s: int, p: int, d: int) -> int:
    """The largest number of sliding windows (kernel k, stride s, padding p, dilation d, n_out
    windows) that contain one of the n_in input positions of one dimension."""
    counts = [0] * n_in
    for i in range(n_out):
        for a in range(k):
            r = i * s - p + a * d
            if 0 <= r < n_in:
                counts[r] += 1
    return max(counts) if counts else 0


@torch.no_grad()
def linear_norm(W: torch.Tensor) -> tuple[float, str]:
    W = W.detach().to(torch.float64)
    if W.dim() != 2:
        raise Skip(f"linear weight of shape {tuple(W.shape)}")
    if min(W.shape) > GRAM_MAX_SIDE:
        return float(torch.linalg.matrix_norm(W, "fro")), "frobenius"
    return float(spectral_norms(W)), "exact"


@torch.no_grad()
def conv_norm(op: "O.Conv2dOp", fft_max_flops: float) -> tuple[float, str]:
    """An upper bound on the spectral norm of the zero-padded convolution ``op`` (see the
    module docstring, 1. (i) and (ii))."""
    w = op.weight().detach().to(torch.float64)
    c_out, cig, kh, kw = w.shape
    g = int(op.groups)
    cog = c_out // g
    _, H, W = op.in_shapes[0]
    _, Ho, Wo = op.out_shape
    (sh, sw), (ph, pw), (dh, dw) = op.stride, op.padding, op.dilation
    wg = w.reshape(g, cog, cig, kh, kw)
    m = window_multiplicity(H, Ho, kh, sh, ph, dh) * window_multiplicity(W, Wo, kw, sw, pw, dw)
    patch = float(spectral_norms(wg.reshape(g, cog, cig * kh * kw)).max()) * math.sqrt(m)
    best, how = patch, "patch"
    # the torus: at least the padded frame, a multiple of the stride
    Nh = -(-(H + 2 * ph) // sh) * sh
    Nw = -(-(W + 2 * pw) // sw) * sw
    Mh, Mw = Nh // sh, Nw // sw
    freqs = Mh * (Mw // 2 + 1)
    cols = cig * sh * sw
    cost = freqs * g * cog * cols * min(cog, cols)
    if (cost <= fft_max_flops and g * cog * cols * Mh * Mw <= FFT_MAX_ELEMENTS
            and dh * (kh - 1) < Nh and dw * (kw - 1) < Nw):
        # polyphase: tap (a, b) reads input phase ((a dh) % sh, (b dw) % sw) shifted by
        # ((a dh) // sh, (b dw) // sw) on the (Mh, Mw) torus of that phase
        K = w.new_zeros(g, cog, cig, sh, sw, Mh, Mw)
        for a in range(kh):
            for b in range(kw):
                K[:, :, :, (a * dh) % sh, (b * dw) % sw, ((a * dh) // sh) % Mh,
                  ((b * dw) // sw) % Mw] += wg[..., a, b]
        spec = torch.fft.rfft2(K)  # (g, cog, cig, sh, sw, Mh, Mw//2+1)
        mats = spec.permute(0, 5, 6, 1, 2, 3, 4).reshape(-1, cog, cols)
        circ = float(spectral_norms(mats).max())
        if circ < best:
            best, how = circ, "circular"
    return best, how


def schur_norm(op: "O.AffineOp", dtype, device) -> float:
    """``sqrt(max row sum * max column sum)`` of a non-negative matrix (Schur test)."""
    rows = op.apply(torch.ones(1, *op.in_shapes[0], dtype=dtype, device=device), bias=False)
    cols = op.transpose(torch.ones(1, 1, *op.out_shape, dtype=dtype, device=device))
    return math.sqrt(float(rows.max()) * float(cols.max()))


def dense_affordable(op: "O.AffineOp") -> bool:
    n_in = math.prod(op.in_shapes[0])
    return n_in <= DENSE_MAX_INPUTS and n_in * math.prod(op.out_shape) <= DENSE_MAX_ENTRIES


@torch.no_grad()
def dense_norm(op: "O.AffineOp", dtype, device) -> float:
    """The exact spectral norm of the op's matrix, built column by column with the op itself."""
    n_in = math.prod(op.in_shapes[0])
    n_out = math.prod(op.out_shape)
    if not dense_affordable(op):
        raise Skip(f"no L2 Lipschitz rule for {op.kind} at node {op.name} and it is too "
                   f"large ({n_in} inputs) for its dense matrix")
    eye = torch.eye(n_in, dtype=dtype, device=device).reshape(n_in, *op.in_shapes[0])
    cols = op.apply(eye, bias=False).reshape(n_in, n_out).to(torch.float64)
    return float(spectral_norms(cols))


@torch.no_grad()
def power_iteration(op: "O.AffineOp", dtype, device, steps: int) -> float:
    """``||A v|| / ||v||`` after ``steps`` power iterations on ``A^T A``: a lower estimate of
    the op's spectral norm (never used as a bound)."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(1, *op.in_shapes[0], generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    v = v / v.norm()
    for _ in range(steps):
        u = op.apply(v, bias=False)
        v = op.transpose(u.unsqueeze(1)).squeeze(1)
        nv = v.norm()
        if not bool(nv > 0):
            return 0.0
        v = v / nv
    return float(op.apply(v, bias=False).norm())


# ---- per-op constants ------------------------------------------------------------------------

def op_constants(op: "O.Op", dtype, device, fft_max_flops: float) -> tuple[list[float], str]:
    """``(c_k per input, rule)``: the op is ``c_k``-Lipschitz (L2) in its k-th input."""
    if isinstance(op, O.ReLUOp):
        return [1.0], "1-Lipschitz"
    if isinstance(op, O.LeakyReLUOp):
        return [max(1.0, abs(op.slope))], "1-Lipschitz"
    if isinstance(op, O.MaxPool2dOp):
        _, H, W = op.in_shapes[0]
        _, Ho, Wo = op.out_shape
        m = (window_multiplicity(H, Ho, op.kernel[0], op.stride[0], op.padding[0], op.dilation[0])
             * window_multiplicity(W, Wo, op.kernel[1], op.stride[1], op.padding[1], op.dilation[1]))
        return [math.sqrt(m)], f"sqrt(window multiplicity {m})"
    if isinstance(op, (O.AddOp, O.SubOp)):
        return [1.0, 1.0], "sum"
    if isinstance(op, (O.ReshapeOp, O.IdentityOp)):
        return [1.0], "isometry"
    if isinstance(op, O.LinearOp):
        c, how = linear_norm(op.weight())
        return [c * SAFETY], how
    if isinstance(op, O.Conv2dOp):
        c, how = conv_norm(op, fft_max_flops)
    elif isinstance(op, (O.AvgPool2dOp, O.MeanOp)):
        c, how = schur_norm(op, dtype, device), "schur"
    else:
        c = None
    if c is not None:
        if dense_affordable(op):  # small enough for the exact norm of its dense matrix
            exact = dense_norm(op, dtype, device)
            if exact < c:
                c, how = exact, "dense"
        return [c * SAFETY], how
    if isinstance(op, O.AffineOp) and op.diagonal:
        s = op.diag_scale(torch.ones(1, *op.in_shapes[0], dtype=dtype, device=device))
        return [float(torch.as_tensor(s).abs().max()) * SAFETY], "diagonal"
    if isinstance(op, O.AffineOp):
        return [dense_norm(op, dtype, device) * SAFETY], "dense"
    raise Skip(f"no L2 Lipschitz rule for operator {op.kind} at node {op.name}")


def pairwise_norms(W: torch.Tensor, max_floats: int = 1 << 24) -> torch.Tensor:
    """(K, K) float64: ``||w_c - w_j||_2`` for the rows of ``W``, from the differences
    themselves (no ``|a|^2 + |b|^2 - 2 a.b`` cancellation)."""
    W = W.detach().to(torch.float64)
    K, d = W.shape
    rows = max(1, max_floats // max(1, K * d))
    return torch.cat([(W[a:a + rows, None, :] - W[None, :, :]).norm(dim=2) for a in range(0, K, rows)])


def graph_constants(g: BoundGraph, dtype, device, *, fft_max_flops: float = FFT_MAX_FLOPS,
                    power_iterations: int = POWER_ITERATIONS) -> tuple[list[float], list[dict]]:
    """Upper bounds ``L_i`` on the L2 Lipschitz constant of every node that the output depends
    on (as a function of the input), and one line of facts per non-trivial op."""
    needed = g.ancestors[g.output]
    L = [math.nan] * len(g.nodes)
    L[0] = 1.0
    layers = []
    for i, node in enumerate(g.nodes[1:], start=1):
        if i not in needed:
            continue
        consts, rule = op_constants(node.op, dtype, device, fft_max_flops)
        L[i] = sum(c * L[j] for c, j in zip(consts, node.inputs, strict=True))
        if not math.isfinite(L[i]):
            raise Skip(f"the bound is not finite at node {node.op.name}")
        if consts == [1.0] or rule == "sum":
            continue
        line = {"node": node.op.name, "kind": node.op.kind, "bound": consts[0], "rule": rule}
        if isinstance(node.op, O.AffineOp) and power_iterations > 0:
            est = power_iteration(node.op, dtype, device, power_iterations)
            line["power_iteration"] = est
            if est > consts[0] * POWER_CHECK + 1e-12:
                raise HarnessError(f"lipschitz: power iteration found ||Av||/||v|| = {est:.6g} above the "
                                   f"bound {consts[0]:.6g} at node {node.op.name} (a bug in the bound)")
        layers.append(line)
    return L, layers


# ---- the certifier ---------------------------------------------------------------------------

class Lipschitz(Certifier):
    name = "lipschitz"
    sound = True
    norms = ("L2",)

    def prepare(self, model, input_shape, device, *, norm: str,
                options: Optional[Mapping[str, Any]] = None) -> Prepared:
        self.check_norm(norm)
        opts = dict(options or {})
        shape = tuple(int(s) for s in input_shape)
        cache = opts.get("cache")
        key = ("bounded-model", shape)
        try:
            if cache is not None and key in cache and cache[key].model is model:
                g = cache[key].graph
            else:
                g = build_graph(model, shape)
            g.check_modes()
        except HarnessError as e:
            raise Skip(str(e)) from None
        p = next(iter(list(model.parameters()) + list(model.buffers())), None)
        dtype = p.dtype if (p is not None and p.is_floating_point()) else torch.float32
        dev = torch.device(device)
        with torch.no_grad():
            L, layers = graph_constants(g, dtype, dev,
                                        fft_max_flops=float(opts.get("fft_max_flops", FFT_MAX_FLOPS)),
                                        power_iterations=int(opts.get("power_iterations", POWER_ITERATIONS)))
            out = g.nodes[g.output]
            K = int(out.shape[0]) if len(out.shape) == 1 else 0
            if K < 2:
                raise Skip(f"the model's output of shape {out.shape} is not a vector of >= 2 logits")
            info: dict = {"lipschitz_constant": L[g.output], "safety_factor": SAFETY, "layers": layers}
            if bool(opts.get("pairwise", True)) and isinstance(out.op, O.LinearOp) and len(out.inputs) == 1:
                h = out.inputs[0]
                margin = pairwise_norms(out.op.weight()) * (SAFETY * L[h])
                info.update(margin_bound="pairwise: ||w_c - w_j|| * L(features)", feature_lipschitz=L[h])
            else:
                margin = torch.full((K, K), math.sqrt(2.0) * L[g.output], dtype=torch.float64)
                info.update(margin_bound="sqrt(2) * L")
        return Prepared(norm=norm, state={"model": model, "margin": margin.to(dev), "num_classes": K},
                        info=info, tolerance=0.0)

    @torch.no_grad()
    def run(self, prepared: Prepared, x, y, *, index=None, eps: float, norm: str, eps_max: float,
            tol: float, seed: int = 0) -> CertResult:
        st = prepared.state
        B = int(x.shape[0])
        logits = st["model"](x)
        check_logits(logits, B, st["num_classes"], stage="certify lipschitz", index=index)
        logits = logits.to(torch.float64)
        y = torch.as_tensor(y, device=logits.device).long()
        pred = logits.argmax(1)
        gap = logits.gather(1, pred.unsqueeze(1)) - logits          # (B, K) >= 0
        const = st["margin"].to(logits.device)[pred]                # (B, K): constant of each margin
        ratio = torch.where(const > 0, gap / const.clamp_min(1e-300),
                            torch.where(gap > 0, torch.full_like(gap, math.inf), torch.zeros_like(gap)))
        ratio.scatter_(1, pred.unsqueeze(1), math.inf)             # no margin against itself
        r = ratio.min(1).values
        correct = pred == y
        certified = correct & (r > float(eps))
        radius = torch.where(correct, r.clamp(max=float(eps_max)), torch.zeros_like(r))
        return CertResult(certified=certified.cpu().numpy(), radius=radius.cpu().numpy(),
                          correct=correct.cpu().numpy())
