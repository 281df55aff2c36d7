"""What meshelect's labgrid drivers share: errors, the session's folder, the firmware build,
and finding the virtual bench a resource names."""

from __future__ import annotations

import atexit
import hashlib
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testkit.waiting import poll_until
from tools import firmware as firmware_tool

if TYPE_CHECKING:
    from hil.bench import Bench

POLL_S = 0.05  # how often waits look again (console lines, gateway state)
WORKDIR_OPTION = "hil_workdir"  # environment option: keep builds, consoles, logs here


class HilError(RuntimeError):
    """A driver could not do its job (the message says which board and why)."""


class HilTimeout(HilError):
    """Something the harness waited for did not happen in time."""


_lock = threading.Lock()
_tmp: tempfile.TemporaryDirectory[str] | None = None
_builds: dict[Path, tuple[dict[str, Any], str]] = {}


def workdir(target: Any) -> Path:
    """The session's folder: the environment's ``hil_workdir`` option (the pytest plugin sets
    it; ``--hil-workdir`` keeps it), else a temporary folder removed when the process ends."""
    global _tmp
    env = getattr(target, "env", None)
    if env is not None:
        configured = env.config.data.get("options", {}).get(WORKDIR_OPTION)
        if configured:
            path = Path(str(configured))
            path.mkdir(parents=True, exist_ok=True)
            return path
    with _lock:
        if _tmp is None:
            _tmp = tempfile.TemporaryDirectory(prefix="meshelect-hil-")
            atexit.register(_tmp.cleanup)
        return Path(_tmp.name)


def firmware_build(target: Any) -> tuple[Path, dict[str, Any], str]:
    """The firmware built once per session folder: (build dir, manifest, build hash).

    The build hash (sha256 over the manifest's file hashes) names exactly what was deployed,
    for the test report's provenance.
    """
    out = workdir(target) / "build"
    with _lock:
        if out not in _builds:
            try:
                manifest = firmware_tool.build(out)
            except firmware_tool.ToolError as exc:
                raise HilError("firmware build: %s" % exc) from None
            _builds[out] = (manifest, manifest_hash(manifest))
        manifest, build_hash = _builds[out]
    return out, manifest, build_hash


def manifest_hash(manifest: dict[str, Any]) -> str:
    parts = sorted("%s:%s" % (e["path"], e["sha256"]) for e in manifest.get("files", []))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def bench_of(target: Any, name: str) -> Bench:
    """The running bench of target ``name`` in ``target``'s environment (built on first use)."""
    env = getattr(target, "env", None)
    bench_target = env.get_target(name) if env is not None else None
    if bench_target is None:
        raise HilError(
            "%s names bench %r, but the environment has no target of that name"
            % (target.name, name)
        )
    driver = bench_target.get_driver("VirtualBenchDriver")  # activating it builds the bench
    bench: Bench = driver.bench
    return bench


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something true; ``HilTimeout`` naming ``what``."""
    result = poll_until(check, timeout, POLL_S)
    if not result:
        raise HilTimeout("waited %.0f s for %s" % (timeout, what))
    return result
