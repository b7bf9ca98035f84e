"""The sandbox around a submission's model: the supervisor side of the evaluation worker, and the
operating-system mechanisms the worker uses on itself.

``harness eval`` is the supervisor. It parses and validates the submission and computes the run's
state folder, but never loads the model: it starts ``python -m harness.sandbox.worker`` (optionally inside
a bubblewrap jail), hands it a :class:`harness.sandbox.worker.WorkerJob` on stdin, and reads one JSON
object per line from the worker's stdout (stage boundaries, the runtime, finished stages, one-line
errors). The worker writes every finished stage into the state folder, as an in-process run would;
the supervisor then reads the stages back (plain JSON and ``allow_pickle=False`` arrays), checks the
sandwich and writes the record.

Limits: the maintainer's caps (``--memory-limit``, ``--stage-timeout``, ``--cpu-limit``, else the
runner's ``ROBUST_FRONTIER_MAX_*`` variables, else the defaults; :mod:`harness.core.settings`), which a
submission's ``evaluation.limits`` can only lower:

- wall clock per stage (and for loading the model): enforced here; on expiry the worker's whole
  process group is killed and the error says which stage ran out of time;
- CPU seconds per stage: the worker sets ``RLIMIT_CPU``'s HARD limit once, before it reads the
  submission, to the whole job's budget (every phase's, plus the waiting allowance): unprivileged,
  it can never raise it. The soft limit moves at each phase boundary (only within the hard one;
  the kernel stops the worker with SIGXCPU), and since code in the worker could lift the soft limit
  up to the hard one, the supervisor also counts each phase's CPU time from /proc and kills the
  worker when a phase overruns its own budget;
- memory: ``RLIMIT_AS`` set by the worker on itself, as the address space it may add after loading
  its libraries (torch alone maps about 3 GB of shared libraries, counted by RLIMIT_AS but not
  used). CUDA reserves a huge virtual address space, so on a CUDA device ``RLIMIT_AS`` is not set
  and the supervisor polls the worker's resident memory instead (a watchdog, every 0.5 s).

Confinement (:func:`confine`, applied by the worker to itself before it reads the submission):

- environment: only an allow-list of the supervisor's variables (:data:`WORKER_ENV`: PATH, locale,
  time zone, GPU selection, thread counts), HOME in the state folder, and PYTHONPATH leading to
  this very harness package: a token or key in the supervisor's environment is not there;
- network: a new network namespace (``unshare``); where the kernel refuses, the supervisor says so
  once and the run goes on;
- user: started as root, the worker also takes a mount namespace of its own, covers each folder on
  the way to what it needs that an unprivileged user could not search (a 0700 home or temporary
  folder) with an empty tmpfs in which only the needed folders are bound again (Python, the harness,
  the submission, the data and the checkpoint cache read-only, the state folder writable, given to
  the worker's user), then drops its supplementary groups, gid and uid to 65534 (nobody) and sets
  ``no_new_privs``. With no capability left in any namespace it cannot ``setns`` back into the
  host's network namespace, raise a hard limit, or write a file it does not own. (A user namespace
  is not needed for this, and would give it capabilities again, inside that namespace.) Not root:
  a new user and network namespace, as ``unshare -rn``;
- ``--sandbox bwrap``: bubblewrap, with a read-only view of the Python installation, the harness,
  the submission and the data, a private /tmp, no network, no capability, no nested user namespace,
  and write access only to the state folder.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import harness
from harness.core.errors import HarnessError
from harness.sandbox.jail import bwrap_command, bwrap_problem

#: how many characters of a worker's error line the supervisor passes on
MAX_ERROR_CHARS = 1000
#: wall-clock seconds the worker may take to start (import torch and the stages' libraries) before
#: it announces the first phase; the submission's code and data play no part in this
STARTUP_TIMEOUT_S = 600.0

_noted: set[str] = set()  # notes already printed by this process (say each once)


# ------------------------------------------------------------------------------ supervisor
#: the supervisor's environment variables the worker keeps (any other, a token or a key among them,
#: it never sees): locale, time zone, search path, the GPU selection and thread counts
WORKER_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
              "CUDA_LAUNCH_BLOCKING", "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
              "PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
WORKER_ENV_PREFIXES = ("LC_",)


def worker_env(state_dir: Path, cache: Path) -> dict[str, str]:
    """The worker's whole environment: the allow-listed variables (:data:`WORKER_ENV`), HOME in the
    state folder, the checkpoint cache, and PYTHONPATH leading to this very harness package (then the
    supervisor's own PYTHONPATH and user site, so that it imports the same libraries)."""
    import site

    env = {k: v for k, v in os.environ.items() if k in WORKER_ENV or k.startswith(WORKER_ENV_PREFIXES)}
    pkg_root = str(Path(harness.__file__).resolve().parent.parent)  # the worker imports this very harness
    paths = [pkg_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user_site and user_site in sys.path and Path(user_site).is_dir():
        paths.append(user_site)  # HOME changes below: the worker would not find it by itself
    env.update(PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
               HOME=str(state_dir / "home"), ROBUST_FRONTIER_CACHE=str(cache))
    env.setdefault("PATH", os.defpath)
    return env


def _children_cpu() -> float:
    import resource

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _cpu_of(root: int, tree: bool) -> float:
    """CPU seconds (user + system, reaped children included) of ``root``, and of its descendants if
    ``tree`` (bubblewrap's jail); 0 where unreadable."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(pid: int) -> tuple[int, float]:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return int(fields[1]), sum(int(f) for f in fields[11:15]) / tick

    try:
        if not tree:
            return of(root)[1]
        parents, cpu = {}, {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    parents[int(d.name)], cpu[int(d.name)] = of(int(d.name))
                except (OSError, ValueError, IndexError):
                    continue
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            total += cpu.get(pid, 0.0)
            todo.extend(children.get(pid, ()))
        return total
    except (OSError, ValueError, IndexError):
        return 0.0


def _rss_of_tree(root: int) -> int:
    """Resident bytes of ``root`` and its descendants (Linux /proc), 0 where unreadable."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            pid, ppid = int(d.name), int(fields[1])
            rss[pid] = int(fields[21]) * page
            children.setdefault(ppid, []).append(pid)
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total


def _phase_label(phase: str) -> str:
    if phase == "start":
        return "starting the evaluation worker"
    return {"load": "loading the model", "audit": "the audit", "wait": "waiting for other ranks",
            "probe": "the sandbox probe", "attack-check": "the attack check"}.get(phase, f"stage {phase}")


class WorkerFailed(HarnessError):
    """The worker stopped before finishing its job (a one-line reason). ``aborted``: it stopped
    because another rank had failed first."""

    def __init__(self, message: str, *, aborted: bool = False):
        super().__init__(message)
        self.aborted = aborted


#: phases without a wall-clock limit: waiting for other ranks' blocks (each rank's own supervisor
#: enforces the limits of the blocks it runs)
UNLIMITED_PHASES = ("wait",)


def run_worker(job, *, mode: str, stage_timeout: float, watch_memory: int | None = None,
               read_only: list[Path] = (), echo: Callable[[str], None] = print,
               tick: Callable[[], None] | None = None) -> dict:
    """Run ``job`` (a :class:`harness.sandbox.worker.WorkerJob`) in a worker process and supervise it.

    The wall-clock limit ``stage_timeout`` applies to loading the model and to each stage: the time
    the worker spends in a stage's blocks adds up. ``tick`` is called about twice a second (rank 0's
    progress bar and reductions).

    Returns the worker's runtime description (device, device name, threads, sandbox, blocks
    computed). Raises a one-line :class:`WorkerFailed` when a stage runs past ``stage_timeout``
    seconds, the worker runs out of memory or CPU time, dies, or reports an error (passed on
    verbatim). Finished blocks and stages stay in ``job.state_dir`` whatever happens.
    """
    state = Path(job.state_dir)
    from harness.submission.hosted import cache_dir

    cache = cache_dir().expanduser().resolve()
    job.read_only = sorted({str(Path(p).resolve()) for p in [*job.read_only, *read_only, Path(job.submission).parent,
                                                              cache, job.data_dir, job.train_data] if p})
    worker_cmd = [sys.executable, "-m", "harness.sandbox.worker"]
    if mode == "bwrap":
        if (why := bwrap_problem()) is not None:
            raise HarnessError(f"--sandbox bwrap: {why}")
        cmd = bwrap_command(worker_cmd, read_only=list(read_only), writable=[state], device=job.device)
    elif mode == "worker":
        cmd = worker_cmd
    else:
        raise HarnessError(f"unknown sandbox {mode!r}; use worker or bwrap")
    env = worker_env(state, cache)
    pkg_root = env["PYTHONPATH"].split(os.pathsep)[0]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True, env=env, cwd=pkg_root)
    except OSError as e:
        raise HarnessError(f"cannot start the evaluation worker: {e}")

    messages: queue.Queue = queue.Queue()

    def read_protocol():
        for raw in proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue  # not a protocol line
            if isinstance(msg, dict):
                messages.put(msg)
        messages.put(None)

    relayed = {"last": "\n"}

    def relay_stderr():  # progress bars and library warnings, as they come
        err = sys.stderr
        while chunk := proc.stderr.read1(4096):
            text = chunk.decode("utf-8", errors="replace")
            relayed["last"] = text[-1:]
            try:
                err.write(text)
                err.flush()
            except (OSError, ValueError):
                pass

    threads = [threading.Thread(target=read_protocol, daemon=True), threading.Thread(target=relay_stderr, daemon=True)]
    for t in threads:
        t.start()
    try:
        proc.stdin.write(job.to_json().encode())
        proc.stdin.close()
    except OSError:
        pass

    phase, phase_started = "start", time.monotonic()
    spent: dict[str, float] = {}  # wall seconds spent in each phase before the current stretch
    # CPU seconds per phase, counted here from /proc: the worker's soft RLIMIT_CPU is the quick
    # check, but code inside the worker could lift it (up to the job's hard limit); this one it cannot
    cpu_limit = getattr(job, "cpu_limit", None)
    from harness.sandbox.job import WAIT_CPU_S, job_cpu_budget

    job_cpu = job_cpu_budget(job)
    children0 = _children_cpu()
    cpu_spent: dict[str, float] = {}
    phase_cpu0 = 0.0
    last_cpu = 0.0
    runtime: dict = {}
    error: str | None = None
    aborted = False
    finished = False
    killed_for: str | None = None
    next_watch = next_tick = 0.0

    def limit_of(ph: str) -> float:
        return STARTUP_TIMEOUT_S if ph == "start" else float("inf") if ph in UNLIMITED_PHASES else stage_timeout

    def cpu_of(ph: str) -> float | None:  # a phase's CPU budget (start: bounded by its wall clock)
        return None if cpu_limit is None or ph == "start" else WAIT_CPU_S if ph in UNLIMITED_PHASES else cpu_limit

    def cpu_over(ph: str, used: float) -> bool:  # a little slack: the kernel's SIGXCPU normally comes first
        budget = cpu_of(ph)
        return budget is not None and used > budget + max(2.0, 0.02 * budget)

    try:
        while True:
            limit = limit_of(phase)
            timeout_left = limit - spent.get(phase, 0.0) - (time.monotonic() - phase_started)
            try:
                msg = messages.get(timeout=max(0.01, min(0.5, timeout_left)))
            except queue.Empty:
                msg = ...
            if msg is None:  # the worker closed its stdout: it exits
                break
            if isinstance(msg, dict):
                event = msg.get("event")
                if event == "phase" and isinstance(msg.get("name"), str):
                    now_ = time.monotonic()
                    spent[phase] = spent.get(phase, 0.0) + now_ - phase_started
                    if cpu_limit is not None:
                        last_cpu = _cpu_of(proc.pid, mode == "bwrap")
                        cpu_spent[phase] = cpu_spent.get(phase, 0.0) + last_cpu - phase_cpu0
                        phase_cpu0 = last_cpu
                    phase, phase_started = msg["name"][:40], now_
                elif event == "sandbox":
                    runtime["sandbox"] = msg.get("sandbox") if isinstance(msg.get("sandbox"), dict) else {}
                    net = str(runtime["sandbox"].get("network", ""))[:200]
                    if net.startswith("not isolated") and net not in _noted:
                        _noted.add(net)
                        echo(f"note: the evaluation worker has network access ({net[len('not isolated: '):]})")
                    user = str(runtime["sandbox"].get("user", ""))[:300]
                    if user.startswith("root (not dropped") and user not in _noted:
                        _noted.add(user)
                        echo(f"note: the evaluation worker runs as root ({user[len('root ('):-1]})")
                elif event == "probe" and isinstance(msg.get("report"), dict):
                    runtime["probe"] = msg["report"]
                elif event == "loaded" and isinstance(msg.get("runtime"), dict):
                    runtime.update(msg["runtime"])
                elif event == "error":
                    error = str(msg.get("message", "the evaluation worker failed"))[:MAX_ERROR_CHARS]
                    aborted = msg.get("aborted") is True
                elif event == "finished":
                    finished = True
                    if isinstance(msg.get("blocks"), int):
                        runtime["blocks"] = msg["blocks"]
            now = time.monotonic()
            if tick is not None and now >= next_tick:
                next_tick = now + 0.5
                tick()
            limit = limit_of(phase)
            if spent.get(phase, 0.0) + now - phase_started > limit:
                killed_for = f"{_phase_label(phase)} exceeded its {limit:g} s wall-clock limit" + (
                    "" if phase == "start" else " (--stage-timeout)")
                break
            if now >= next_watch and (watch_memory is not None or cpu_limit is not None):
                next_watch = now + 0.5
                if watch_memory is not None and _rss_of_tree(proc.pid) > watch_memory:
                    from harness.core.units import format_size
                    killed_for = (f"{_phase_label(phase)} exceeded the memory limit of {format_size(watch_memory)} "
                                  "(--memory-limit)")
                    break
                if cpu_limit is not None:
                    last_cpu = max(last_cpu, _cpu_of(proc.pid, mode == "bwrap"))
                    if cpu_over(phase, cpu_spent.get(phase, 0.0) + last_cpu - phase_cpu0):
                        killed_for = f"{_phase_label(phase)} exceeded its CPU-time limit of {cpu_of(phase):g} s " \
                                     "(--cpu-limit)"
                        break
    finally:
        if killed_for is not None or proc.poll() is None and not (finished or error):
            _kill(proc)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.wait()
        for t in threads:
            t.join(timeout=5)
        if relayed["last"] not in ("\n", ""):  # end a progress bar's line before any message
            try:
                sys.stderr.write("\n")
            except (OSError, ValueError):
                pass
    kept = f"; finished stages are kept in {state}"
    if killed_for is not None:
        raise WorkerFailed(killed_for + kept)
    if error is not None:
        raise WorkerFailed(error, aborted=aborted)
    rc = proc.returncode
    if rc == 0 and finished:
        return runtime
    if rc < 0:
        sig = -rc
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        budget = cpu_of(phase)
        if sig == signal.SIGXCPU:
            raise WorkerFailed(f"{_phase_label(phase)} exceeded its CPU-time limit"
                               f"{f' of {budget:g} s' if budget is not None else ''} (--cpu-limit){kept}")
        if sig == signal.SIGKILL and job_cpu is not None and _children_cpu() - children0 >= job_cpu - 1:
            raise WorkerFailed(f"the evaluation worker used the whole job's CPU time ({job_cpu:g} s, hard "
                               f"RLIMIT_CPU) during {_phase_label(phase)} (--cpu-limit){kept}")
        if sig == signal.SIGKILL:
            raise WorkerFailed(f"the evaluation worker was killed (SIGKILL) during {_phase_label(phase)}, "
                               f"probably by the system for lack of memory{kept}")
        raise WorkerFailed(f"the evaluation worker died from {name} during {_phase_label(phase)}{kept}; "
                           f"see {state / 'worker.log'}")
    raise WorkerFailed(f"the evaluation worker exited with status {rc} during {_phase_label(phase)}{kept}; "
                       f"see {state / 'worker.log'}")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass
