"""Benchmark / reference: our IBP and CROWN margin bounds against auto_LiRPA's on the VNN-COMP 2021
``mnistfc`` and ``eran`` nets (fetched snapshots, no network; auto_LiRPA is a reference here, never
a dependency of the harness).

    python benchmarks/bench_bounds_vs_lirpa.py [--quick] [--bench mnistfc eran] [--threads 1]

For every instance (net, property) of the benchmarks' instances csv whose net our tracer supports
(the ERAN sigmoid net is skipped and counted), it computes lower bounds on the nine margins
``y_t - y_j`` over the property's input box with ``method=IBP`` and ``method=CROWN`` in both
libraries (float32, one thread, same ONNX model object) and prints per net and method:

- ``looser``: the largest amount by which ours is below auto_LiRPA's (0 when never);
- ``rel``: the same divided by ``1 + |auto_LiRPA's bound|`` (float32 rounding is relative: on the
  ERAN 9x200 net the IBP margins are around -5e5, where one float32 ulp is 0.06);
- ``tighter``: the largest amount by which ours is above auto_LiRPA's;
- the median time per instance of each.

The check is ``looser <= 1e-5 * (1 + |bound|)`` on every margin; the script exits 1 when it fails.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _vnn_snapshots as V  # noqa: E402

from harness.bounds import crown as CR  # noqa: E402
from harness.bounds import ibp as I  # noqa: E402
from harness.bounds.alpha import BoxSet  # noqa: E402
from harness.bounds.graph import build_graph  # noqa: E402
from harness.core.errors import HarnessError  # noqa: E402

TOL = 1e-5


def spec(label: int, n: int = 10) -> torch.Tensor:
    eye = torch.eye(n)
    return (eye[label] - eye[[j for j in range(n) if j != label]]).unsqueeze(0)


def ours(g, lo, hi, C, method):
    inp = BoxSet(lo, hi)
    with torch.no_grad():
        if method == "IBP":
            st, _ = I.propagate(g, inp)
            return I.spec_bounds(g, st, C, True, False)[0]
        return CR.crown_bounds(g, inp, C, "crown", True, False, 2 ** 24)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", nargs="+", default=["mnistfc", "eran"])
    ap.add_argument("--quick", action="store_true", help="3 properties per net")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the per-instance figures here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lirpa, lirpa_commit = V.import_lirpa()
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
    print(f"auto_LiRPA snapshot {lirpa_commit[:12]} (version {getattr(lirpa, '__version__', '?')}); "
          f"vnncomp2021 snapshot {V.git_head(V.VNNCOMP)[:12]}; torch {torch.__version__}; "
          f"threads {a.threads}; float32")
    ok = True
    rows = []
    for bench in a.bench:
        insts = V.instances(V.benchmark_dir(bench))
        by_net: dict = {}
        for net, prop, _ in insts:
            by_net.setdefault(net, []).append(prop)
        for net, props in by_net.items():
            if a.quick:
                props = props[:3]
            model = V.load_onnx(net)
            shape = V.input_shape(model, net)
            try:
                g = build_graph(model, shape)
            except HarnessError as e:
                print(f"{bench}/{net.name}: skipped ({e})")
                continue
            x0 = torch.zeros(1, *shape)
            bm = BoundedModule(model, x0, device="cpu")
            stats = {m: {"looser": 0.0, "rel": 0.0, "tighter": 0.0, "t_ours": [], "t_lirpa": []}
                     for m in ("IBP", "CROWN")}
            for prop in props:
                lo, hi, label = V.read_robustness_property(prop, shape)
                C = spec(label)
                bt = BoundedTensor((lo + hi) / 2, PerturbationLpNorm(x_L=lo, x_U=hi))
                for m in ("IBP", "CROWN"):
                    t = time.perf_counter()
                    ref, _ = bm.compute_bounds(x=(bt,), C=C, method=m, bound_upper=False)
                    t_ref = time.perf_counter() - t
                    t = time.perf_counter()
                    mine = ours(g, lo, hi, C, m)
                    t_mine = time.perf_counter() - t
                    ref = ref.detach()
                    gap = (ref - mine).max().item()
                    rel = ((ref - mine) / (1 + ref.abs())).max().item()
                    s = stats[m]
                    s["looser"] = max(s["looser"], gap)
                    s["rel"] = max(s["rel"], rel)
                    s["tighter"] = max(s["tighter"], (mine - ref).max().item())
                    s["t_ours"].append(t_mine)
                    s["t_lirpa"].append(t_ref)
                    if rel > TOL:
                        ok = False
                        print(f"  LOOSER: {net.name} {prop.name} {m}: ours {mine.tolist()} auto_LiRPA {ref.tolist()}")
                    rows.append({"bench": bench, "net": net.name, "prop": prop.name, "method": m,
                                 "ours": mine.tolist(), "auto_lirpa": ref.tolist(), "s_ours": t_mine,
                                 "s_lirpa": t_ref})
            for m, s in stats.items():
                print(f"{bench}/{net.name} {m:5s} n={len(props):2d}: looser {s['looser']:.3g} (rel {s['rel']:.2g})"
                      f"  tighter up to {s['tighter']:.4g}  median s ours {statistics.median(s['t_ours']):.3f}"
                      f" auto_LiRPA {statistics.median(s['t_lirpa']):.3f}")
    print("check: ours never looser than auto_LiRPA (rel 1e-5):", "PASS" if ok else "FAIL")
    if a.json is not None:
        a.json.write_text(json.dumps({"auto_lirpa_commit": lirpa_commit, "rows": rows}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
