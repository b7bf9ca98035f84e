"""The maintainer's caps on the sandboxed evaluation worker, and the effective limits of a run.

The caps belong to whoever runs the harness, never to the submission:

- memory: ``--memory-limit`` or ``ROBUST_FRONTIER_MAX_MEMORY`` (e.g. ``16G``; ``none``: no cap),
  default :data:`DEFAULT_MAX_MEMORY` (16 GiB);
- wall clock per stage: ``--stage-timeout`` or ``ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S``, default
  :data:`DEFAULT_MAX_STAGE_TIMEOUT_S` (6 h);
- CPU seconds per stage: ``--cpu-limit`` or ``ROBUST_FRONTIER_MAX_CPU_S``, default the wall-clock
  limit x the CPU cores;
- one download (``harness fetch``): ``ROBUST_FRONTIER_MAX_DOWNLOAD_BYTES``, default
  :data:`DEFAULT_MAX_DOWNLOAD_BYTES` (8 GiB).

A flag wins over the environment, the environment over the default. A submission's
``evaluation.limits`` can only lower a cap (``{memory: 1T, stage_timeout_s: 604800}`` runs under the
caps). Memory ``none`` (flag or environment) lifts the memory cap; nothing lifts the others. A NaN,
infinite, negative, zero or unparsable value is a one-line :class:`~harness.core.errors.HarnessError`
naming the flag or variable.

All of the runner's settings from the environment are one object, :class:`Settings`
(pydantic-settings, prefix ``ROBUST_FRONTIER_``): the caps above, the checkpoint cache, the hosts a
fetch may reach although not public, and whether plug-ins load. :func:`settings` reads it afresh
(the environment of a test or a runner may change); the modules that use a value ask it, and no other
module reads a ``ROBUST_FRONTIER_*`` variable. The signing key's variables stay with the signing code
(:mod:`harness.record.signing`): a secret is read only by the one step that signs.

Torch-free: imported by the schema (:mod:`harness.submission`) and the fetcher.
"""
from __future__ import annotations

import math
import os
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from harness.core.errors import HarnessError, one_line

#: the maintainer's default caps (the one definition; the schema and the model builder use these)
DEFAULT_MAX_MEMORY = 16 * 2**30
DEFAULT_MAX_STAGE_TIMEOUT_S = 6 * 3600.0
DEFAULT_MAX_DOWNLOAD_BYTES = 8 * 2**30

MEMORY_ENV = "ROBUST_FRONTIER_MAX_MEMORY"
STAGE_TIMEOUT_ENV = "ROBUST_FRONTIER_MAX_STAGE_TIMEOUT_S"
CPU_ENV = "ROBUST_FRONTIER_MAX_CPU_S"
DOWNLOAD_ENV = "ROBUST_FRONTIER_MAX_DOWNLOAD_BYTES"

#: the largest number of seconds any limit may be (the schema's bound too: a week)
MAX_SECONDS = 7 * 24 * 3600.0 * 1024


def parse_seconds(value: Any, what: str) -> float:
    """A finite number of seconds > 0 from a flag, a variable or a number; else one line naming ``what``."""
    try:
        seconds = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise HarnessError(f"{what}: must be a finite number of seconds > 0 (at most {MAX_SECONDS:.0f}), "
                           f"got {one_line(value, 40)!r}")
    return seconds


def parse_bytes(value: Any, what: str, *, allow_none: bool) -> int | None:
    """Bytes from ``16G``, ``512M``, a plain number, or (``allow_none``) ``none``/``0`` for no cap."""
    from harness.core.units import parse_size

    try:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError
        size = parse_size(value)
    except (ValueError, TypeError):
        raise HarnessError(f"{what}: must be a size such as 16G, 512M or a number of bytes"
                           f"{' (or none)' if allow_none else ''}, got {one_line(str(value), 40)!r}") from None
    if size is None and not allow_none:
        raise HarnessError(f"{what}: must be a size above 0 such as 8G, got {one_line(str(value), 40)!r}")
    return size


class Settings(BaseSettings):
    """The runner's settings from its environment (``ROBUST_FRONTIER_<FIELD>``). Values are kept as
    given and parsed where they are used, so that a bad one is a one-line error naming its variable."""

    model_config = SettingsConfigDict(env_prefix="ROBUST_FRONTIER_", extra="ignore", frozen=True)

    max_memory: str | None = None  # a size (16G) or none: the cap on the worker's memory
    max_stage_timeout_s: str | None = None  # seconds: the cap on a stage's wall clock
    max_cpu_s: str | None = None  # seconds: the cap on a stage's CPU time
    max_download_bytes: str | None = None  # a size: the cap on one download
    max_certify_budget_s: str | None = None  # seconds: the cap on the complete certifier's budget per example
    cache: str | None = None  # the checkpoint cache folder (default ~/.cache/robust-frontier)
    fetch_allow_hosts: str = ""  # host:port origins a fetch may reach although not public (tests)
    plugins: str = "1"  # "0": load no plug-in (harness.core.plugins)


def settings() -> Settings:
    """The settings, read from the environment now."""
    return Settings()


_FIELD_OF = {MEMORY_ENV: "max_memory", STAGE_TIMEOUT_ENV: "max_stage_timeout_s", CPU_ENV: "max_cpu_s",
             DOWNLOAD_ENV: "max_download_bytes", "ROBUST_FRONTIER_MAX_CERTIFY_BUDGET_S": "max_certify_budget_s"}


def _env(name: str) -> str | None:
    value = getattr(settings(), _FIELD_OF[name])
    return value if value is not None and value.strip() != "" else None


def maintainer_caps(memory: int | None = None, stage_timeout: float | None = None,
                    cpu: float | None = None) -> dict[str, Any]:
    """The caps of this run: the given values (from flags; ``memory`` 0 = no memory cap), else the
    environment, else the defaults. ``cpu`` None after that: the wall-clock cap x the CPU cores.
    Returns ``{"memory": bytes | None, "stage_timeout": s, "cpu": s, "source": {cap: where}}``."""
    source = {}
    if memory is not None:
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
            raise HarnessError(f"--memory-limit: must be a number of bytes >= 0, got {one_line(str(memory), 40)!r}")
        mem, source["memory"] = (memory or None), "--memory-limit"
    elif (env := _env(MEMORY_ENV)) is not None:
        mem, source["memory"] = parse_bytes(env, MEMORY_ENV, allow_none=True), MEMORY_ENV
    else:
        mem, source["memory"] = DEFAULT_MAX_MEMORY, "default"
    if stage_timeout is not None:
        timeout, source["stage_timeout"] = parse_seconds(stage_timeout, "--stage-timeout"), "--stage-timeout"
    elif (env := _env(STAGE_TIMEOUT_ENV)) is not None:
        timeout, source["stage_timeout"] = parse_seconds(env, STAGE_TIMEOUT_ENV), STAGE_TIMEOUT_ENV
    else:
        timeout, source["stage_timeout"] = DEFAULT_MAX_STAGE_TIMEOUT_S, "default"
    if cpu is not None:
        cpu_cap, source["cpu"] = parse_seconds(cpu, "--cpu-limit"), "--cpu-limit"
    elif (env := _env(CPU_ENV)) is not None:
        cpu_cap, source["cpu"] = parse_seconds(env, CPU_ENV), CPU_ENV
    else:
        cpu_cap, source["cpu"] = timeout * (os.cpu_count() or 1), "default"
    return {"memory": mem, "stage_timeout": timeout, "cpu": cpu_cap, "source": source}


def effective_limits(requested, caps: dict[str, Any]) -> dict[str, Any]:
    """The run's limits: each the smaller of the maintainer's cap and the submission's request
    (``requested``: its ``evaluation.limits``; a field None requests nothing). The CPU budget the
    submission does not set is the effective wall-clock limit x the CPU cores, within the cap.
    Returns ``{"memory", "stage_timeout", "cpu", "set_by": {limit: "maintainer" | "submission"}}``."""
    set_by = {}

    def lower(cap, asked, name):
        if asked is not None and (cap is None or asked < cap):
            set_by[name] = "submission"
            return asked
        set_by[name] = "maintainer"
        return cap

    memory = lower(caps["memory"], getattr(requested, "memory", None), "memory")
    timeout = float(lower(caps["stage_timeout"], getattr(requested, "stage_timeout_s", None), "stage_timeout"))
    asked_cpu = getattr(requested, "cpu_seconds", None)
    if asked_cpu is None and caps["source"].get("cpu") == "default":
        cpu = timeout * (os.cpu_count() or 1)
        set_by["cpu"] = set_by["stage_timeout"]
    else:
        cpu = float(lower(caps["cpu"], asked_cpu, "cpu"))
    for name, v in (("stage_timeout", timeout), ("cpu", cpu)):  # the schema bounds these; a last check
        if not (math.isfinite(v) and v > 0):
            raise HarnessError(f"the {name.replace('_', ' ')} limit must be a finite number of seconds > 0, got {v!r}")
    return {"memory": memory, "stage_timeout": timeout, "cpu": cpu, "set_by": set_by}


def max_download_bytes() -> int:
    """The maintainer's cap on one download (``ROBUST_FRONTIER_MAX_DOWNLOAD_BYTES``, default 8 GiB)."""
    env = _env(DOWNLOAD_ENV)
    if env is None:
        return DEFAULT_MAX_DOWNLOAD_BYTES
    size = parse_bytes(env, DOWNLOAD_ENV, allow_none=False)
    assert size is not None
    return size


# ---------------------------------------------------------------------- the complete certifier's budget
#: seconds per example for the ``complete`` certifier when the submission sets no
#: ``evaluation.certify_budget_s``, and the maintainer's default cap on it
DEFAULT_CERTIFY_BUDGET_S = 60.0
DEFAULT_MAX_CERTIFY_BUDGET_S = 600.0
CERTIFY_BUDGET_ENV = "ROBUST_FRONTIER_MAX_CERTIFY_BUDGET_S"


def certify_budget_cap(flag: Any = None) -> tuple[float, str]:
    """The maintainer's cap on the per-example budget of ``complete``: ``--certify-budget``, else
    ``ROBUST_FRONTIER_MAX_CERTIFY_BUDGET_S``, else :data:`DEFAULT_MAX_CERTIFY_BUDGET_S`; (seconds, source)."""
    if flag is not None:
        return parse_seconds(flag, "--certify-budget"), "--certify-budget"
    if (env := _env(CERTIFY_BUDGET_ENV)) is not None:
        return parse_seconds(env, CERTIFY_BUDGET_ENV), CERTIFY_BUDGET_ENV
    return DEFAULT_MAX_CERTIFY_BUDGET_S, "default"


def certify_budget(requested: float | None, cap: float) -> tuple[float, str]:
    """The per-example budget of ``complete``: the submission's ``evaluation.certify_budget_s`` (else
    :data:`DEFAULT_CERTIFY_BUDGET_S`), never above the maintainer's ``cap``; (seconds, set_by)."""
    asked = DEFAULT_CERTIFY_BUDGET_S if requested is None else float(requested)
    if asked <= cap:
        return asked, "submission" if requested is not None else "default"
    return float(cap), "maintainer"
