"""torchrun support for the supervisors: one ``harness eval`` per rank.

``torchrun --nproc-per-node 8 -m harness eval SUB`` starts 8 supervisors with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. Each one joins the process
group (NCCL when the evaluation runs on CUDA, gloo on CPU), evaluates on its ``LOCAL_RANK`` device
through its own sandboxed worker, and uses the group only for small control messages:

- rank 0 makes the run's plan (the attempt number, the stages to run) and broadcasts it;
- at the end every rank sends its device and block count to all (``all_gather_object``, which also
  acts as the final barrier), and rank 0 writes the record.

The workers never join the group: they share work through the state folder (:mod:`harness.stages.blocks`),
which must be on a filesystem every node sees. Without a torchrun environment there is no group, and
world size 1 runs exactly as before.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any

from harness.core.errors import HarnessError, one_line

#: how long a collective may wait for the slowest rank; the ranks only meet when the state folder
#: says everything is done (they poll it), so this is a safety net, not a schedule
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: True under torchrun (a process group is, or will be, initialised)
    launched: bool = False
    backend: str | None = None
    #: torchrun --max-restarts: how many times the job was restarted (TORCHELASTIC_RESTART_COUNT)
    restart_count: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Distributed":
        """The torchrun environment of this process, or world size 1 without one."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env or "RANK" not in env:
            return cls()
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", rank))
        except ValueError:
            raise HarnessError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)")
        if not (0 <= rank < world and local >= 0):
            raise HarnessError(f"RANK {rank} is outside WORLD_SIZE {world}")
        restarts = env.get("TORCHELASTIC_RESTART_COUNT", "0")
        return cls(rank=rank, world_size=world, local_rank=local, launched=True,
                   restart_count=int(restarts) if restarts.isdigit() else 0)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested):
        """This rank's device: ``cuda:LOCAL_RANK`` when the evaluation runs on CUDA, else the CPU."""
        import torch

        if not self.launched or requested.type != "cuda":
            return requested
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise HarnessError(f"LOCAL_RANK {self.local_rank} but only {count} CUDA device(s) are visible on "
                               f"{socket.gethostname()}; start at most {count} processes per node")
        return torch.device("cuda", self.local_rank)

    def init(self, device) -> None:
        """Join the process group (NCCL on CUDA, gloo on CPU), once per process."""
        if not self.launched:
            return
        import torch
        import torch.distributed as dist

        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if dist.is_initialized():
            return
        if self.backend == "nccl":
            torch.cuda.set_device(device)  # the object collectives use the current device
        try:
            dist.init_process_group(backend=self.backend, timeout=COLLECTIVE_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - a rendezvous failure is one line, not a traceback
            raise HarnessError(f"cannot join the torchrun process group ({self.backend}): "
                               f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.launched:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        self._collective(dist.broadcast_object_list, box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (also a barrier)."""
        if not self.launched:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        self._collective(dist.all_gather_object, out, obj)
        return out

    def _collective(self, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - another rank died: torchrun reports it; one line here
            raise HarnessError(f"lost contact with the other ranks ({type(e).__name__}: "
                               f"{one_line(e, 200)})")

    def report_failure(self, line: str, *, at: float | None = None, after: float | None = None) -> None:
        """Write torchrun's error file for this rank (``TORCHELASTIC_ERROR_FILE``, the file its
        ``@record`` decorator writes): torchrun's failure summary then shows this one line, and names
        as the root cause the rank whose failure is dated first. ``at``: when this rank failed;
        ``after``: when the rank whose failure stopped this one failed (this one is dated later)."""
        import json
        import time

        path = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if not self.launched or not path:
            return
        stamp = int(at if at is not None else time.time())
        if after is not None:
            stamp = max(stamp, int(after) + 1)
        try:
            with open(path, "w", encoding="utf-8") as f:  # the layout @record writes; our line, no traceback
                json.dump({"message": {"message": line, "extraInfo": {"py_callstack": line,
                                                                      "timestamp": str(stamp)}}}, f)
        except OSError:
            pass

    def close(self) -> None:
        if not self.launched:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - shutting down
                pass
