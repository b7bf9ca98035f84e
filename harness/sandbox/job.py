"""The worker's job (:class:`WorkerJob`, JSON on the worker's stdin) and its protocol (one JSON object a line on
stdout): what the supervisor and any launcher build, and what :mod:`harness.sandbox.worker` reads."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


@dataclass
class WorkerJob:
    submission: str  # absolute path of submission.yaml
    submission_sha256: str  # as the supervisor read it: the worker refuses a file changed since
    state_dir: str  # the run's state folder (finished stages are read from and written to it)
    stages: list[str]  # stages to run, in order (finished ones are skipped)
    device: str  # "cpu", "cuda", "cuda:1"
    n_examples: int
    batch_size: int
    data_dir: str | None = None
    train_data: str | None = None
    progress: bool = True
    trust_code: bool = False
    memory_limit: int | None = None  # bytes the worker may add after loading its libraries; None: no limit
    cpu_limit: float | None = None  # CPU seconds per phase; None: no limit
    isolate_network: bool = True  # False when bubblewrap already did
    parent_pid: int | None = None  # the supervisor: exit at once if it is already gone
    max_model_bytes: int | None = None  # cap on a state_dict architecture's size
    rank: int = 0  # torchrun: this worker's rank, and how many ranks share the blocks
    world_size: int = 1
    plan: dict | None = None  # harness.runner.schedule.Plan (attempt, stages to compute, their inputs)
    kind: str = "eval"  # "eval"; "audit" (harness.review.audit.recompute); "forward" (pr-check: run_forward);
    #                     "probe": report what code in the worker can see and do (harness.sandbox.supervisor.probe);
    #                     "attack": classify an external attack's checked images (harness.review.attack_check);
    #                     "verify": harness verify (harness.certifiers.vnncomp.run_verify_job; submission is
    #                     the ONNX file, submission_sha256 its hash)
    audit: dict | None = None  # the audit's inputs (kind "audit")
    attack: dict | None = None  # attack-check's inputs (kind "attack"): input_shape, num_classes, forward_passes,
    # seed; the images are <state_dir>/attack_inputs.npz
    forward: dict | None = None  # pr-check's forward pass (kind "forward"): input_shape, num_classes, n_inputs,
    # seed, count_flops
    verify: dict | None = None  # harness verify (kind "verify"): deadline_unix, threads, seed; the property in
    # <state_dir>/property.npz, the answer written to <state_dir>/verify.npz
    read_only: list[str] = field(default_factory=list)  # folders the worker reads (its view when root)
    extra: dict = field(default_factory=dict)  # room for launchers

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerJob":
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        return cls(**data)


class _Protocol:
    def __init__(self, stream):
        self.stream = stream

    def send(self, **msg) -> None:
        self.stream.write(json.dumps(msg) + "\n")
        self.stream.flush()


def log_name(rank: int) -> str:
    return "worker.log" if rank == 0 else f"worker.rank{rank}.log"


