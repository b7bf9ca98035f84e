"""The sandbox around a submission's model: the supervisor side of the evaluation worker, and the
operating-system mechanisms the worker uses on itself.

``harness eval`` is the supervisor. It parses and validates the submission and computes the run's
state folder, but never loads the model: it starts ``python -m harness.worker`` (optionally inside
a bubblewrap jail), hands it a :class:`harness.worker.WorkerJob` on stdin, and reads one JSON
object per line from the worker's stdout (stage boundaries, the runtime, finished stages, one-line
errors). The worker writes every finished stage into the state folder, as an in-process run would;
the supervisor then reads the stages back (plain JSON and ``allow_pickle=False`` arrays), checks the
sandwich and writes the record.

Limits (``evaluation.limits`` in the submission, overridden by ``--memory-limit``,
``--stage-timeout``, ``--cpu-limit``):

- wall clock per stage (and for loading the model): enforced here; on expiry the worker's whole
  process group is killed and the error says which stage ran out of time;
- CPU seconds per stage: ``RLIMIT_CPU``, raised by the worker at each stage boundary (the kernel
  stops it with SIGXCPU);
- memory: ``RLIMIT_AS`` set by the worker on itself, as the address space it may add after loading
  its libraries (torch alone maps about 3 GB of shared libraries, counted by RLIMIT_AS but not
  used). CUDA reserves a huge virtual address space, so on a CUDA device ``RLIMIT_AS`` is not set
  and the supervisor polls the worker's resident memory instead (a watchdog, every 0.5 s);
- network: the worker moves itself into a new network namespace (``unshare``) before it imports
  anything; where the kernel refuses, the supervisor says so once and the run goes on;
- ``--sandbox bwrap``: bubblewrap, with a read-only view of the Python installation, the harness,
  the submission and the data, a private /tmp, no network, and write access only to the state folder.
"""
from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from .errors import HarnessError

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG = 1
#: how many characters of a worker's error line the supervisor passes on
MAX_ERROR_CHARS = 1000
#: wall-clock seconds the worker may take to start (import torch and the stages' libraries) before
#: it announces the first phase; the submission's code and data play no part in this
STARTUP_TIMEOUT_S = 600.0

_noted: set[str] = set()  # notes already printed by this process (say each once)


# ------------------------------------------------------------------------------ in the worker
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """Linux: the kernel kills this process (SIGKILL) when its parent dies, so a worker never outlives
    a supervisor killed with SIGKILL."""
    if sys.platform.startswith("linux"):
        try:
            _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _unshare(flags: int) -> None:
    if hasattr(os, "unshare"):  # Python 3.12+
        os.unshare(flags)
        return
    libc = _libc()
    if libc.unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def isolate_network() -> str:
    """Move this (single-threaded) process into a new, empty network namespace: no interface but a
    down loopback, so no connection can be made. As root, ``CLONE_NEWNET`` alone; otherwise inside a
    new user namespace mapping the current user to root, as ``unshare -rn`` does. Returns a short
    description of the outcome; never raises."""
    if not sys.platform.startswith("linux"):
        return f"not isolated: network namespaces need Linux (this is {sys.platform})"
    errors = []
    if os.geteuid() == 0:
        try:
            _unshare(CLONE_NEWNET)
            return "isolated (new network namespace)"
        except OSError as e:
            errors.append(f"unshare(CLONE_NEWNET): {e.strerror or e}")
    uid, gid = os.geteuid(), os.getegid()
    try:
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
    except OSError as e:
        errors.append(f"unshare(CLONE_NEWUSER|CLONE_NEWNET): {e.strerror or e}")
        return "not isolated: " + "; ".join(errors)
    try:  # map ourselves, so that files keep their owner (as `unshare -r`)
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    except OSError:
        pass
    return "isolated (new user and network namespace)"


def vm_size() -> int | None:
    """This process's virtual address space in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# --------------------------------------------------------------------------- bubblewrap jail
_bwrap_checked: dict[str, str | None] = {}


def bwrap_problem() -> str | None:
    """None if ``bwrap`` is installed and can build a jail here, else why not (one line)."""
    if "r" in _bwrap_checked:
        return _bwrap_checked["r"]
    exe = shutil.which("bwrap")
    if exe is None:
        why: str | None = "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    else:
        try:
            p = subprocess.run([exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all",
                                "--die-with-parent", "true"], capture_output=True, timeout=30)
            err = p.stderr.decode(errors="replace").strip().splitlines()
            detail = err[0][:200] if err else p.returncode
            why = None if p.returncode == 0 else f"bwrap cannot build a jail here: {detail}"
        except (OSError, subprocess.SubprocessError) as e:
            why = f"bwrap cannot run: {e}"
    _bwrap_checked["r"] = why
    return why


def _python_roots() -> list[Path]:
    """What the worker's Python needs to read: the interpreter's prefixes, every existing sys.path
    folder except the current one, and the harness package itself (for editable installs)."""
    import harness

    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(harness.__file__).parent}
    for entry in sys.path:
        if entry and Path(entry).is_dir() and Path(entry).resolve() != Path.cwd().resolve():
            roots.add(Path(entry))
    return sorted({r.resolve() for r in roots if r.exists()})


def bwrap_command(worker_cmd: list[str], *, read_only: list[Path], writable: list[Path], device: str) -> list[str]:
    """``bwrap ... -- <worker_cmd>``: the system's libraries, the Python installation and
    ``read_only`` mounted read-only, ``writable`` read-write, a private /tmp, /dev and /proc, all
    namespaces new (no network), a new session (no terminal injection), killed with its parent."""
    cmd = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--dev", "/dev", "--proc", "/proc",
           "--tmpfs", "/tmp", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp"]
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        p = Path(top)
        if p.is_symlink():
            cmd += ["--symlink", os.readlink(p), top]
        elif p.is_dir():
            cmd += ["--ro-bind", top, top]
    for etc in ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "passwd", "group",
                "nsswitch.conf", "ssl/certs"):
        cmd += ["--ro-bind-try", f"/etc/{etc}", f"/etc/{etc}"]
    if device.startswith("cuda"):  # the GPU's device files and the driver's view of it
        for dev in sorted(Path("/dev").glob("nvidia*")):
            cmd += ["--dev-bind", str(dev), str(dev)]
        cmd += ["--ro-bind-try", "/sys", "/sys"]
    for p in _python_roots() + sorted({q.resolve() for q in read_only}):
        cmd += ["--ro-bind", str(p), str(p)]
    for p in writable:  # last: a writable folder inside a read-only one stays writable
        cmd += ["--bind", str(p.resolve()), str(p.resolve())]
    cmd += ["--chdir", str(Path(__file__).resolve().parent.parent), "--"]
    return cmd + worker_cmd


# ------------------------------------------------------------------------------ supervisor
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
    return {"load": "loading the model", "audit": "the audit", "wait": "waiting for other ranks"}.get(
        phase, f"stage {phase}")


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
               on_block: Callable[[str, int, float], None] | None = None,
               tick: Callable[[], None] | None = None) -> dict:
    """Run ``job`` (a :class:`harness.worker.WorkerJob`) in a worker process and supervise it.

    The wall-clock limit ``stage_timeout`` applies to loading the model and to each stage: the time
    the worker spends in a stage's blocks adds up. ``on_block`` is called for each block the worker
    finishes, ``tick`` about twice a second (rank 0's progress bar and reductions).

    Returns the worker's runtime description (device, device name, threads, sandbox, blocks
    computed). Raises a one-line :class:`WorkerFailed` when a stage runs past ``stage_timeout``
    seconds, the worker runs out of memory or CPU time, dies, or reports an error (passed on
    verbatim). Finished blocks and stages stay in ``job.state_dir`` whatever happens.
    """
    state = Path(job.state_dir)
    worker_cmd = [sys.executable, "-m", "harness.worker"]
    if mode == "bwrap":
        if (why := bwrap_problem()) is not None:
            raise HarnessError(f"--sandbox bwrap: {why}")
        cmd = bwrap_command(worker_cmd, read_only=list(read_only), writable=[state], device=job.device)
    elif mode == "worker":
        cmd = worker_cmd
    else:
        raise HarnessError(f"unknown sandbox {mode!r}; use worker or bwrap")
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parent.parent)  # the worker imports this very harness
    env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
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
    runtime: dict = {}
    error: str | None = None
    aborted = False
    finished = False
    killed_for: str | None = None
    next_watch = next_tick = 0.0

    def limit_of(ph: str) -> float:
        return STARTUP_TIMEOUT_S if ph == "start" else float("inf") if ph in UNLIMITED_PHASES else stage_timeout

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
                    phase, phase_started = msg["name"][:40], now_
                elif event == "sandbox":
                    runtime["sandbox"] = msg.get("sandbox") if isinstance(msg.get("sandbox"), dict) else {}
                    net = str(runtime["sandbox"].get("network", ""))[:200]
                    if net.startswith("not isolated") and net not in _noted:
                        _noted.add(net)
                        echo(f"note: the evaluation worker has network access ({net[len('not isolated: '):]})")
                elif event == "loaded" and isinstance(msg.get("runtime"), dict):
                    runtime.update(msg["runtime"])
                elif event == "block" and isinstance(msg.get("stage"), str) and isinstance(msg.get("block"), int):
                    seconds = msg.get("seconds")
                    if on_block is not None:
                        on_block(msg["stage"][:40], msg["block"],
                                 float(seconds) if isinstance(seconds, (int, float)) else 0.0)
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
            if watch_memory is not None and now >= next_watch:
                next_watch = now + 0.5
                if _rss_of_tree(proc.pid) > watch_memory:
                    from .submission import format_size
                    killed_for = (f"{_phase_label(phase)} exceeded the memory limit of {format_size(watch_memory)} "
                                  "(--memory-limit)")
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
        if sig == signal.SIGXCPU:
            raise WorkerFailed(f"{_phase_label(phase)} exceeded its CPU-time limit (--cpu-limit){kept}")
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
