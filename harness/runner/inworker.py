"""The ``eval`` job kind, inside the sandboxed worker (:data:`harness.sandbox.job.JOB_KINDS`): the stages'
blocks of one evaluation, written into the state folder for the supervisor to read back."""
from __future__ import annotations

import json

from harness.runner.evaluate import runtime_info
from harness.sandbox.job import WAIT_CPU_S, JobContext, cpu_now, set_cpu_budget


def run_eval(ctx: JobContext) -> None:
    """Job kind ``eval``: load the data and the model, then compute this worker's share of the plan's
    blocks (:func:`harness.runner.schedule.run_blocks`), each stage's CPU budget set at its boundaries."""
    job, sub, proto, sandbox, status = ctx.job, ctx.submission, ctx.proto, ctx.sandbox, ctx.status
    from pathlib import Path

    import torch

    from harness.core.files import atomic_write_text
    from harness.data.loaders import load_test_data, num_classes_of
    from harness.models.load import load_model
    from harness.runner.schedule import Plan, run_blocks
    from harness.stages import EvalContext, EvalOptions

    state_dir = Path(job.state_dir)
    spec = sub.spec
    options = EvalOptions(device=job.device, batch_size=job.batch_size, n_examples=job.n_examples,
                          data_dir=Path(job.data_dir) if job.data_dir else None,
                          train_data=Path(job.train_data) if job.train_data else None,
                          progress=job.progress, sandbox="none", trust_code=job.trust_code,
                          certify_budget=job.extra.get("certify_budget_cap_s"))
    data = load_test_data(spec.dataset, job.n_examples, data_dir=options.data_dir, custom_path=sub.dataset_path(),
                          preprocessing=spec.resize_crop)
    num_classes = num_classes_of(data)
    device = torch.device(job.device)
    torch.manual_seed(spec.evaluation.seed)
    model = load_model(sub, input_shape=data.input_shape, num_classes=num_classes, device=device,
                       trust_code=job.trust_code, max_model_bytes=job.max_model_bytes)
    runtime = {**runtime_info(device), "sandbox": sandbox}
    if job.rank == 0:
        atomic_write_text(state_dir / "runtime.json", json.dumps(runtime))
    proto.send(event="loaded", runtime=runtime)
    ctx = EvalContext(sub, model, data, options, state_dir, rank=job.rank, world_size=job.world_size)
    plan = Plan.from_dict(job.plan) if job.plan is not None else None
    if plan is None:
        raise ValueError("the job has no plan")

    cpu_used: dict[str, float] = {}  # CPU seconds each stage has used in this worker
    current = {"stage": None, "cpu0": 0.0}

    def close_phase() -> None:
        if current["stage"] is not None:
            cpu_used[current["stage"]] = cpu_used.get(current["stage"], 0.0) + cpu_now() - current["cpu0"]
            current["stage"] = None

    def on_start(name: str, b: int) -> None:
        close_phase()
        status["phase"] = name
        proto.send(event="phase", name=name, block=b)
        current["stage"], current["cpu0"] = name, cpu_now()
        if job.cpu_limit is not None:
            set_cpu_budget(job.cpu_limit - cpu_used.get(name, 0.0))

    def on_done(name: str, b: int, seconds: float) -> None:
        proto.send(event="block", stage=name, block=b, seconds=seconds)

    def on_wait() -> None:
        close_phase()
        status["phase"] = "wait"
        proto.send(event="phase", name="wait")
        if job.cpu_limit is not None:
            set_cpu_budget(WAIT_CPU_S)

    blocks = run_blocks(ctx, plan, on_start=on_start, on_done=on_done, on_wait=on_wait)
    close_phase()
    status["blocks"] = blocks
