"""Tests of common.atomic: complete-or-nothing writes and leftovers of killed writers."""

import os
import time

import pytest

from common import atomic


def _hidden_temps(folder, name):
    return sorted(n for n in os.listdir(folder) if n.startswith(f".{name}.tmp-"))


def test_write_text_replaces_and_keeps_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "report.json"
    atomic.write_text(str(path), "one")
    atomic.write_text(str(path), "two")
    assert path.read_text() == "two"
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert _hidden_temps(path.parent, "report.json") == []


def test_failed_write_keeps_the_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "model.bin"
    atomic.write_bytes(str(path), b"old")

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_atomically(str(path), broken)
    assert path.read_bytes() == b"old"
    assert _hidden_temps(tmp_path, "model.bin") == []


def test_next_write_removes_stale_leftovers_only(tmp_path):
    """A killed writer's temp file (or folder) goes once old; a young one stays."""
    path = tmp_path / "a.json"
    stale_file = tmp_path / ".a.json.tmp-dead1"
    stale_file.write_text("half")
    stale_dir = tmp_path / ".a.json.tmp-dead2"
    (stale_dir / "variables").mkdir(parents=True)
    young = tmp_path / ".a.json.tmp-live"
    young.write_text("a concurrent writer")
    other = tmp_path / ".b.json.tmp-dead3"  # another target's: not ours to touch
    other.write_text("half")
    old = time.time() - atomic.STALE_TEMP_SECONDS - 60
    for entry in (stale_file, stale_dir, other):
        os.utime(entry, (old, old))

    atomic.write_text(str(path), "{}")
    assert path.read_text() == "{}"
    assert _hidden_temps(tmp_path, "a.json") == [".a.json.tmp-live"]
    assert other.exists()
    assert atomic.remove_stale_temps(str(path), max_age_seconds=-1) == [str(young)]


def test_a_dead_writers_temp_goes_at_once_a_live_ones_stays(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "export"
    left = tmp_path / f".export.tmp-{dead.pid}-abc"
    (left / "saved_model").mkdir(parents=True)  # young, but its writer is gone
    live = tmp_path / f".export.tmp-{os.getppid()}-def"
    live.mkdir()
    assert atomic.remove_stale_temps(str(path)) == [str(left)]
    assert live.exists()


def test_temp_dir_has_the_usual_permissions_and_a_pid_name(tmp_path):
    previous = os.umask(0o022)
    try:
        tmp = atomic.make_temp_dir(str(tmp_path / "out"))
    finally:
        os.umask(previous)
    assert os.stat(tmp).st_mode & 0o777 == 0o755  # mkdtemp alone: 0700
    assert os.path.basename(tmp).startswith(f".out.tmp-{os.getpid()}-")
    assert atomic.remove_stale_temps(str(tmp_path / "out")) == []  # ours, and young
