"""compare_real's peer-fitting child ends with its parent, even when the parent is
killed (``experiments.comparison.peer_cache.die_with_parent``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import os, sys, time\\n"
        "from experiments.comparison.peer_cache import die_with_parent\\n"
        "die_with_parent(int(sys.argv[1]))\\n"
        "print('ready', flush=True)\\n"
        "time.sleep(120)\\n", str(os.getpid())], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    print(child.pid, flush=True)
    time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (not reaped yet) has ended too
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_child_ends_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child_pid), "the child outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_child_whose_parent_is_gone_ends_at_once():
    code = ("from experiments.comparison.peer_cache import die_with_parent\n"
            "die_with_parent(1)\nprint('survived')\n")  # pid 1 is never our parent
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 1 and "survived" not in result.stdout
