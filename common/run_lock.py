"""One training per run directory: ``run_dir/run.lock`` (:func:`run_dir_lock`).

The lock records the holder's pid, host, start time and command line; a second process
gets :class:`RunDirLocked`, a dead process's lock is taken over. The decorator that
locks a training function (``common.training.locks_run_dir``, which selects the
strategy first so that only the chief locks) stays with the runner;
``common.training`` re-exports these names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
"""The lock file of a run directory in use (JSON: pid, host, start time, command)."""


class RunDirLocked(RuntimeError):
    """Another live process trains in this run directory."""


_held_locks: dict[str, int] = {}  # lock path -> nesting depth, in this process


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def _read_lock(path: str) -> dict[str, Any] | None:
    """The lock's record; ``None`` when it vanished; ``{}`` when not (yet) readable."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _try_create_lock(path: str) -> bool:
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv}
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w") as f:
        json.dump(record, f)
    return True


def _acquire_lock(run_dir: str, path: str) -> None:
    host = socket.gethostname()
    for _ in range(50):
        if _try_create_lock(path):
            return
        record = _read_lock(path)
        if record is None:  # released meanwhile
            continue
        pid, holder = record.get("pid"), record.get("host")
        if not record:
            # Being written by its creator (a few microseconds), or a leftover of a
            # process killed exactly then: stale once older than a few seconds.
            try:
                young = time.time() - os.path.getmtime(path) < 5.0
            except FileNotFoundError:
                continue
            if young:
                time.sleep(0.1)
                continue
        elif holder != host or not isinstance(pid, int) or _process_alive(pid):
            raise RunDirLocked(
                f"{run_dir} is in use by another training (pid {pid} on {holder}, "
                f"started {record.get('started')}: {' '.join(record.get('argv') or [])}); "
                "wait for it to finish or use another --run_dir (if that process is "
                f"gone, delete {path})")
        # A dead process's lock: take it over. The rename lets only one taker win.
        stale = f"{path}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(path, stale)
        except FileNotFoundError:
            continue
        os.remove(stale)
        logger.warning("took over the lock of %s left by pid %s on %s (no longer running)",
                       run_dir, pid, holder)
    raise RunDirLocked(f"cannot lock {run_dir} ({path} keeps changing)")


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Holds ``run_dir/run.lock`` so that only one training uses a run directory.

    The lock file records the process id and host. A second process entering the
    same run directory gets :class:`RunDirLocked` with a clear message; the lock of a
    process that no longer runs (killed, crashed) on this host is taken over. Nested
    use in one process (the model's training around the shared runner) is allowed.
    Run directories on object stores (``gs://``) are not locked: they have no
    exclusive file creation.

    Args:
        run_dir: the run directory (created).
        enabled: ``False`` does nothing (e.g. on the workers that are not the chief).

    Raises:
        RunDirLocked: another live process holds the lock.
    """
    run_dir = os.fspath(run_dir)
    if not enabled or "://" in run_dir:
        yield
        return
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(run_dir, LOCK_FILE))
    if path in _held_locks:
        _held_locks[path] += 1
        try:
            yield
        finally:
            _held_locks[path] -= 1
        return
    _acquire_lock(run_dir, path)
    _held_locks[path] = 1
    try:
        yield
    finally:
        del _held_locks[path]
        record = _read_lock(path)
        if record and record.get("pid") == os.getpid():
            os.remove(path)
