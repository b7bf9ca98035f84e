"""Benchmark: our alpha-CROWN against auto_LiRPA's ``CROWN-Optimized`` (fetched snapshot; a
reference here, never a dependency) on the VNN-COMP 2021 ``mnistfc`` nets, same properties, same
iterations, same learning rate, one thread each.

    python benchmarks/bench_alpha_crown.py [--quick] [--iters 20] [--props 4] [--threads 1]

Two settings, each library in the same one:

- ``final``: only the final specification's slopes are optimised, the intermediate bounds are
  CROWN's (auto_LiRPA's default, ``fix_interm_bounds=True``; ours ``intermediate=False``);
- ``interm``: the intermediate layers' slopes are optimised too (auto_LiRPA
  ``fix_interm_bounds=False``; ours ``intermediate=True``, the default in ``verify``).

Per net and setting it prints the largest amount by which our margins are looser / tighter than
auto_LiRPA's, the total seconds of each (process wall clock, ``time.perf_counter``; the machine
may be shared: the ratio is what counts) and the time ratio ours / auto_LiRPA. Targets: never
looser (relative 1e-5), time ratio <= 0.5.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _vnn_snapshots as V  # noqa: E402

from harness.bounds.alpha import AlphaCrown, BoxSet  # noqa: E402
from harness.bounds.graph import build_graph  # noqa: E402


def spec(label: int, n: int = 10) -> torch.Tensor:
    eye = torch.eye(n)
    return (eye[label] - eye[[j for j in range(n) if j != label]]).unsqueeze(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 properties per net, the 256x2 and 256x4 nets")
    ap.add_argument("--props", type=int, default=4, help="properties per net")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", nargs="+", default=["final", "interm"])
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lirpa, commit = V.import_lirpa()
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
    print(f"auto_LiRPA {commit[:12]} (version {getattr(lirpa, '__version__', '?')}); iterations {a.iters}; "
          f"lr {a.lr}; threads {a.threads}; torch {torch.__version__}; float32")
    bench = V.benchmark_dir("mnistfc")
    by_net: dict = {}
    for net, prop, _ in V.instances(bench):
        by_net.setdefault(net, []).append(prop)
    nets = list(by_net)[:2] if a.quick else list(by_net)
    nprops = 2 if a.quick else a.props
    ok = True
    total = {s: [0.0, 0.0] for s in a.settings}
    for net in nets:
        model = V.load_onnx(net)
        shape = V.input_shape(model, net)
        g = build_graph(model, shape)
        for setting in a.settings:
            opts = {"optimize_bound_args": {"iteration": a.iters, "lr_alpha": a.lr,
                                            "fix_interm_bounds": setting == "final",
                                            "early_stop_patience": 10, "lr_decay": 0.98}}
            bm = BoundedModule(model, torch.zeros(1, *shape), bound_opts=opts, device="cpu")
            looser = tighter = rel = 0.0
            t_ours = t_ref = 0.0
            for prop in by_net[net][:nprops]:
                lo, hi, label = V.read_robustness_property(prop, shape)
                C = spec(label)
                bt = BoundedTensor((lo + hi) / 2, PerturbationLpNorm(x_L=lo, x_U=hi))
                t = time.perf_counter()
                ref, _ = bm.compute_bounds(x=(bt,), C=C, method="CROWN-Optimized", bound_upper=False)
                t_ref += time.perf_counter() - t
                ref = ref.detach()
                t = time.perf_counter()
                eng = AlphaCrown(g, BoxSet(lo, hi), C, intermediate=setting == "interm")
                mine, _ = eng.run(iters=a.iters, lr=a.lr, lr_decay=0.98, patience=10)
                t_ours += time.perf_counter() - t
                looser = max(looser, (ref - mine).max().item())
                rel = max(rel, ((ref - mine) / (1 + ref.abs())).max().item())
                tighter = max(tighter, (mine - ref).max().item())
            ok &= rel <= 1e-5
            total[setting][0] += t_ours
            total[setting][1] += t_ref
            print(f"{net.name} {setting:6s} n={nprops}: looser {looser:.3g} (rel {rel:.2g})  tighter up to "
                  f"{tighter:.4g}  s ours {t_ours:.2f} auto_LiRPA {t_ref:.2f}  ratio {t_ours / t_ref:.2f}x")
    for s, (o, r) in total.items():
        print(f"total {s}: ours {o:.2f} s, auto_LiRPA {r:.2f} s, time ratio {o / r:.2f}x (target <= 0.5x)")
    print("bounds never looser than auto_LiRPA's (rel 1e-5):", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
