"""pr-check's forward pass (job kind ``forward``), inside the sandboxed worker."""
from __future__ import annotations

import time
from pathlib import Path

from harness.sandbox.job import JobContext, set_cpu_budget


def run_forward(ctx: JobContext) -> None:
    """pr-check's model work (kind "forward"): load the model as an evaluation does (hashes, safe
    loading, the 2-input output check), count its FLOPs if asked (fvcore, for models the supervisor
    cannot build on the meta device: ONNX, some zoo entries), then one timed forward pass of
    ``n_inputs`` random inputs in [0, 1] with the logits check. The logits, the time and the counts
    go to ``forward.npz`` in the state folder, which the supervisor reads back and checks again as
    untrusted data."""
    import numpy as np
    import torch

    from harness.core.files import atomic_savez
    from harness.models.load import check_logits, load_model

    job, sub, proto, status = ctx.job, ctx.submission, ctx.proto, ctx.status
    f = job.forward or {}
    shape = tuple(int(d) for d in f["input_shape"])
    num_classes, n = int(f["num_classes"]), int(f["n_inputs"])
    device = torch.device(job.device)
    torch.manual_seed(int(f.get("seed", 0)))
    model = load_model(sub, input_shape=shape, num_classes=num_classes, device=device, trust_code=False,
                       max_model_bytes=job.max_model_bytes)
    counts = {"flops": np.asarray(-1.0), "params": np.asarray(-1, dtype=np.int64)}
    if f.get("count_flops"):
        from harness.compute.flops import count_inference_flops

        try:
            fc = count_inference_flops(model.module, shape, device)
            counts = {"flops": np.asarray(float(fc.total)), "params": np.asarray(int(fc.params), dtype=np.int64)}
        except Exception:  # noqa: BLE001 - fvcore cannot trace some modules: the counts stay unknown
            pass
    status["phase"] = "forward"
    proto.send(event="phase", name="forward")
    set_cpu_budget(job.cpu_limit)
    x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(int(f.get("seed", 0)))).to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.module(x)
    seconds = time.perf_counter() - t0
    check_logits(out, n, num_classes, stage=f"forward pass on {n} random inputs")
    proto.send(event="block", stage="forward", block=0, seconds=seconds)
    atomic_savez(Path(job.state_dir) / "forward.npz", {
        "logits": out.detach().float().cpu().numpy(), "seconds": np.asarray(seconds), **counts})
