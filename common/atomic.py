"""Atomic writes of local files: a temporary file beside the target, then a rename.

A reader (or a rerun after a crash) sees either the previous file or the complete new
one, never a half-written one. The temporary file is hidden (``.NAME.tmp-XXXX``) so
that globs such as ``*.keras`` or ``*.json`` never pick it up, and it is removed when
writing fails. A writer killed outright (SIGKILL, power loss) cannot remove its
temporary file; the next successful write of the same target removes such leftovers
once they are older than ``STALE_TEMP_SECONDS`` (a younger one may belong to a
concurrent writer), or at once when the process that made them is dead (the temporary
names carry the writer's process id: ``.NAME.tmp-<pid>-XXXX``).

Files and folders get the usual permissions: ``0o666`` resp. ``0o777`` less the umask
(``mkstemp``/``mkdtemp`` alone would give ``0600``/``0700``).
(``common.training.atomic_write_text`` / ``save_model_atomically`` do the same through
``tf.io.gfile`` for paths on object stores.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

STALE_TEMP_SECONDS = 3600.0
"""Age after which another writer's temporary file of the same target is a leftover."""


def write_atomically(path: str, write: Callable[[str], Any], *, suffix: str = "") -> str:
    """Calls ``write(tmp)`` on a temporary path beside ``path``, then renames it.

    Args:
        path: destination file (its folder is created).
        write: writes the content to the path it is given (e.g. ``model.save``, a
            plotting function).
        suffix: ending of the temporary name, for writers that choose the format by
            extension (``".png"``, ``".keras"``).

    Returns:
        ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=folder)
    os.close(handle)
    try:
        write(tmp)
        if os.path.isfile(tmp):  # mkstemp makes 0600 files: give the usual permissions
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    remove_stale_temps(path)
    return path


def temp_prefix(path: str) -> str:
    """``.NAME.tmp-<pid>-``: the prefix of this process's temporary siblings of ``path``."""
    return f".{os.path.basename(os.path.abspath(path))}.tmp-{os.getpid()}-"


def make_temp_dir(path: str) -> str:
    """A new empty temporary folder beside ``path`` with the usual permissions.

    Its name starts with :func:`temp_prefix`, so :func:`remove_stale_temps` of
    ``path`` removes it once its writer is dead.

    Args:
        path: the folder the temporary one will replace (its parent is created).

    Returns:
        The temporary folder.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=temp_prefix(path), dir=folder)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    return tmp


def _writer_is_dead(name: str, prefix: str) -> bool:
    """Whether the temp ``name`` carries the pid of a process that no longer exists."""
    pid, _, rest = name[len(prefix):].partition("-")
    if not pid.isdigit() or not rest or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def remove_stale_temps(path: str, max_age_seconds: float = STALE_TEMP_SECONDS) -> list[str]:
    """Removes temporary files (or folders) of ``path`` left by killed writers.

    Args:
        path: the target whose ``.NAME.tmp-*`` siblings are checked.
        max_age_seconds: entries last modified longer ago than this are removed, and
            younger ones whose name carries the pid of a dead process.

    Returns:
        The removed paths.
    """
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}.tmp-"
    removed = []
    now = time.time()
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for entry_name in names:
        if not entry_name.startswith(prefix):
            continue
        entry = os.path.join(folder, entry_name)
        try:
            if (now - os.lstat(entry).st_mtime <= max_age_seconds
                    and not _writer_is_dead(entry_name, prefix)):
                continue
            if os.path.isdir(entry) and not os.path.islink(entry):
                shutil.rmtree(entry)
            else:
                os.remove(entry)
        except OSError:  # removed meanwhile by someone else, or not ours to remove
            continue
        removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str, data: bytes | str, *, fsync: bool = False) -> str:
    """Writes ``data`` (``str`` is UTF-8 encoded) to ``path`` atomically.

    Args:
        path: destination file.
        data: the content.
        fsync: flush the content to disk before the rename (for large artefacts that
            must survive a power loss, e.g. exported models).

    Returns:
        ``path``.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(payload)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    return write_atomically(path, write)


def write_text(path: str, text: str) -> str:
    """Writes ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text)


def write_figure(plot_fn: Callable[..., Any], path: str, *args: Any, **kwargs: Any) -> str:
    """Calls ``plot_fn(*args, tmp_png, **kwargs)`` (a ``common.plots`` function) and
    renames the PNG to ``path``; returns ``path``."""
    return write_atomically(path, lambda tmp: plot_fn(*args, tmp, **kwargs), suffix=".png")
