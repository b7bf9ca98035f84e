"""The operating-system mechanisms of the sandbox: what the evaluation worker applies to itself
(:func:`confine`: a scrubbed view, a new network namespace, an unprivileged user when started as root,
``no_new_privs``; :func:`die_with_parent`), the probe that reports what code in the worker can see and
do, and the bubblewrap jail the supervisor can start the worker in. The design and the limits are
described in :mod:`harness.sandbox.supervisor`; the supervisor and the worker both import this module,
and it imports neither.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import harness
from harness.core.errors import one_line

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG = 1

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


# ------------------------------------------------- in the worker: an unprivileged user when root
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
PR_SET_NO_NEW_PRIVS = 38
#: the user and group a worker started as root runs as (``nobody``/``nogroup`` on Debian and Ubuntu)
WORKER_UID = WORKER_GID = 65534


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    if _libc().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _may(st: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    """Whether uid:gid (no supplementary groups) has ``bits`` (4 read, 1 search) by the mode bits."""
    shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
    return (st.st_mode >> shift) & bits == bits


def _blocked_ancestor(path: Path, uid: int, gid: int) -> Path | None:
    """The topmost proper ancestor of ``path`` that uid:gid may not search, or None."""
    for a in reversed(path.parents):
        if not _may(os.stat(a), uid, gid, 1):
            return a
    return None


def _under(p: Path, top: Path) -> bool:
    return p == top or top in p.parents


def _reachable_view(needed: list[tuple[Path, bool]], uid: int, gid: int) -> list[str]:
    """In this process's own mount namespace (set up while root): make every needed folder reachable
    for uid:gid. Each topmost ancestor that the user may not search (a 0700 home or temporary
    folder) is covered by an empty tmpfs; inside it, the way down to each needed folder is made of
    fresh 0755 folders and the folder itself is bound there again (read-only unless writable). So the
    user reaches the needed folders and nothing else that was behind the ancestor. Returns the covered
    ancestors."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing here propagates back to the host
    covered: list[str] = []
    for _round in range(16):  # each round covers the blockers of the current view
        blockers = {b for p, _ in needed if (b := _blocked_ancestor(p, uid, gid)) is not None}
        tops = sorted(b for b in blockers if not any(o != b and _under(b, o) for o in blockers))
        if not tops:
            return covered
        for top in tops:
            if top == Path("/") or any(p == top for p, _ in needed):
                raise OSError(f"uid {uid} may not search {top}, a folder the worker needs")
            under = sorted({(p, w) for p, w in needed if _under(p, top) and p != top},
                           key=lambda pw: (len(pw[0].parts), pw[1]))
            fds = [(p, w, os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)) for p, w in under]
            try:
                _mount("tmpfs", str(top), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=1m")
                for p, w, fd in fds:
                    for d in [q for q in reversed(p.parents) if top in q.parents] + [p]:
                        if not d.exists():
                            d.mkdir(mode=0o755)
                            d.chmod(0o755)
                    _mount(f"/proc/self/fd/{fd}", str(p), None, MS_BIND | MS_REC)
                    if not w:
                        _mount(None, str(p), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            finally:
                for *_, fd in fds:
                    os.close(fd)
            covered.append(str(top))
    raise OSError("too many nested folders that the worker's user may not search")


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give uid:gid the folders of ``root`` and its files with one link (never following a link: a
    hard link a previous worker made to a file elsewhere keeps its owner)."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
                if stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1):
                    os.chown(p, uid, gid, follow_symlinks=False)
            except OSError:
                pass


def _readable_copies(folder: Path, state: Path, uid: int, gid: int) -> int:
    """In this process's private mount namespace (still root): each regular file directly in
    ``folder`` that uid:gid may not read (safetensors' ``save_file`` writes 0600 files, so a model
    saved by root is one) is copied into ``<state>/.readable/`` (0444, root's) and that copy is bound,
    read-only, over the file's path. The worker then reads the same bytes (the checkpoint's hash is
    checked after loading as always); the host's file and its mode are never touched. Returns the
    number of files copied."""
    n = 0
    if not folder.is_dir():
        return 0
    for f in sorted(folder.iterdir()):
        st = os.lstat(f)
        if not stat.S_ISREG(st.st_mode) or _may(st, uid, gid, 4):
            continue
        copies = state / ".readable"
        copies.mkdir(mode=0o755, exist_ok=True)
        os.chown(copies, 0, 0)
        dst = copies / str(n)
        shutil.copyfile(f, dst, follow_symlinks=False)
        os.chmod(dst, 0o444)
        _mount(str(dst), str(f), None, MS_BIND)
        _mount(None, str(f), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        n += 1
    return n


def confine(state_dir: str | os.PathLike, read_only: list[str | os.PathLike] = (), *, uid: int = WORKER_UID,
            gid: int = WORKER_GID, submission_folder: str | os.PathLike | None = None) -> dict[str, str]:
    """The worker's confinement, applied to itself before it reads anything the submission gave it
    (single-threaded, Linux). Returns ``{"network": ..., "user": ...}`` (short descriptions).

    Not root: a new user and network namespace (:func:`isolate_network`). Root: a new mount and
    network namespace, the folders it needs made reachable (:func:`_reachable_view`: Python, the
    harness, ``read_only``, and ``state_dir`` writable, given to uid:gid; files of
    ``submission_folder`` only root may read bound as read-only copies, :func:`_readable_copies`),
    then the supplementary
    groups, the gid and the uid dropped to ``uid``:``gid`` and ``no_new_privs`` set. The worker then
    has no capability in any namespace: it cannot ``setns`` back into the host's network namespace,
    raise a hard resource limit, or write a file it does not own. Raises OSError (one line) if root
    cannot give up root."""
    if not sys.platform.startswith("linux"):
        return {"network": isolate_network(), "user": f"unchanged ({sys.platform})"}
    if os.geteuid() != 0:
        return {"network": isolate_network(), "user": f"uid {os.geteuid()} (not root: unchanged)"}
    state = Path(state_dir).resolve()
    needed = {(p, False) for p in _python_roots()}
    needed |= {(Path(p).resolve(), False) for p in read_only if p and Path(p).exists()}
    needed = {(p if p.is_dir() else p.parent, w) for p, w in needed}
    needed.add((state, True))
    try:
        _unshare(CLONE_NEWNS | CLONE_NEWNET)
    except OSError as e:  # e.g. a container without CAP_SYS_ADMIN
        network, view = isolate_network(), f"no private view: unshare(CLONE_NEWNS): {e.strerror or e}"
    else:
        network = "isolated (new network namespace)"
        try:
            covered = _reachable_view(sorted(needed), uid, gid)
            view = f"private view over {', '.join(covered)}" if covered else "every needed folder reachable"
        except OSError as e:
            view = f"no private view: {e.strerror or e}"
    unreachable = [str(p) for p, _ in sorted(needed) if _blocked_ancestor(p, uid, gid) is not None]
    if unreachable:  # dropping root would leave the worker unable to read Python or the submission
        return {"network": network, "user": f"root (not dropped: uid {uid} cannot reach {unreachable[0]}; {view})"}
    home = state / "home"
    home.mkdir(exist_ok=True)
    _chown_tree(state, uid, gid)
    if submission_folder is not None and not view.startswith("no private view"):
        if copied := _readable_copies(Path(submission_folder).resolve(), state, uid, gid):
            view += f"; {copied} file(s) of the submission readable only by root bound as read-only copies"
    for p, _ in sorted(needed):
        if not _may(os.stat(p), uid, gid, 5):
            raise OSError(f"the evaluation worker runs as uid {uid} and may not read {p} "
                          f"(mode {stat.S_IMODE(os.stat(p).st_mode):o}); make it readable (chmod o+rX) "
                          "or run the harness as a user other than root")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if _libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_NO_NEW_PRIVS) failed")
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise OSError("the evaluation worker could not give up root")
    return {"network": network, "user": f"uid {uid}, gid {gid}, no capabilities ({view})"}


def probe(extra: dict, host_netns_fd: int | None = None) -> dict:
    """What code in the worker can see and do, for the tests and a maintainer checking a runner
    (job kind ``probe``): its user, capabilities, environment names, whether it can join the host's
    network namespace (through /proc, or through ``host_netns_fd``, a descriptor of it opened before
    the confinement, as a leaked one would be) or raise its CPU limit, connect to ``extra["connect"]``
    ([host, port]), read ``extra["read"]`` and write ``extra["write"]`` (lists of paths)."""
    import errno
    import resource
    import socket

    def err(e: OSError) -> str:
        return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else str(e)

    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    caps = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff:")), "unknown")


    report: dict = {"uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(), "cap_eff": caps,
                    "env": sorted(os.environ), "harness": str(Path(harness.__file__).resolve().parent),
                    "setns": {}, "read": {}, "write": {}}
    for target in ("/proc/1/ns/net", f"/proc/{os.getppid()}/ns/net", *extra.get("netns", [])):
        try:
            fd = os.open(target, os.O_RDONLY)
        except OSError as e:
            report["setns"][target] = f"open: {err(e)}"
            continue
        try:
            libc = _libc()
            ok = libc.setns(fd, CLONE_NEWNET) == 0
            report["setns"][target] = "joined" if ok else f"setns: {errno.errorcode.get(ctypes.get_errno(), '?')}"
        finally:
            os.close(fd)
    if host_netns_fd is not None:
        ok = _libc().setns(host_netns_fd, CLONE_NEWNET) == 0
        report["setns"]["held descriptor"] = "joined" if ok else \
            f"setns: {errno.errorcode.get(ctypes.get_errno(), '?')}"
    soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    report["rlimit_cpu"] = [soft, hard]
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY if hard != resource.RLIM_INFINITY
                                                  else hard))
        report["raise_hard"] = "raised" if hard != resource.RLIM_INFINITY else "no hard limit"
    except (OSError, ValueError) as e:
        report["raise_hard"] = f"refused: {e}"
    if extra.get("connect"):
        try:
            socket.create_connection(tuple(extra["connect"]), timeout=5).close()
            report["connect"] = "connected"
        except OSError as e:
            report["connect"] = f"refused: {err(e)}"
    for p in extra.get("read", []):
        try:
            Path(p).read_bytes()
            report["read"][p] = "read"
        except OSError as e:
            report["read"][p] = err(e)
    for p in extra.get("write", []):
        try:
            with open(p, "ab"):
                pass
            report["write"][p] = "written"
        except OSError as e:
            report["write"][p] = err(e)
    return report


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
_bwrap_checked: dict[str, str | None] = {}  # bwrap_problem()'s answer, the options


def _bwrap_confinement() -> list[str]:
    """bubblewrap's options that leave the jailed worker no capability and no way to make a user
    namespace of its own (in which it would be root again and could remount its read-only folders):
    ``--unshare-user --disable-userns`` where this bwrap has it (0.8+), and ``--cap-drop ALL`` (as
    root, bwrap otherwise keeps every capability inside the jail)."""
    if "opts" not in _bwrap_checked:
        try:
            help_text = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            help_text = ""
        _bwrap_checked["opts"] = " ".join(["--unshare-user", "--disable-userns"] if "--disable-userns" in help_text
                                          else [])
    return [*filter(None, str(_bwrap_checked["opts"]).split()), "--cap-drop", "ALL"]


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
                                *_bwrap_confinement(), "--die-with-parent", "true"], capture_output=True, timeout=30)
            err = p.stderr.decode(errors="replace").strip().splitlines()
            detail = one_line(err[0], 200) if err else p.returncode
            why = None if p.returncode == 0 else f"bwrap cannot build a jail here: {detail}"
        except (OSError, subprocess.SubprocessError) as e:
            why = f"bwrap cannot run: {e}"
    _bwrap_checked["r"] = why
    return why


def _python_roots() -> list[Path]:
    """What the worker's Python needs to read: the interpreter's prefixes, every existing sys.path
    folder except the current one, and the harness package itself (for editable installs)."""


    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(harness.__file__).parent}
    for entry in sys.path:
        if entry and Path(entry).is_dir() and Path(entry).resolve() != Path.cwd().resolve():
            roots.add(Path(entry))
    return sorted({r.resolve() for r in roots if r.exists()})


def bwrap_command(worker_cmd: list[str], *, read_only: list[Path], writable: list[Path], device: str) -> list[str]:
    """``bwrap ... -- <worker_cmd>``: the system's libraries, the Python installation and
    ``read_only`` mounted read-only, ``writable`` read-write, a private /tmp, /dev and /proc, all
    namespaces new (no network), a new session (no terminal injection), killed with its parent."""
    cmd = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all", *_bwrap_confinement(), "--dev", "/dev",
           "--proc", "/proc", "--tmpfs", "/tmp", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp"]
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
    cmd += ["--chdir", str(Path(harness.__file__).resolve().parent.parent), "--"]
    return cmd + worker_cmd


