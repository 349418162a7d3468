"""Training on several machines: ``MultiWorkerMirroredStrategy`` with two local workers.

Two Python processes on 127.0.0.1 form a cluster through ``TF_CONFIG``
(``{"cluster": {"worker": ["127.0.0.1:p0", "127.0.0.1:p1"]}, "task": {"type": "worker",
"index": i}}``) and train a tiny MSRRN (``train_msrrn``) and a tiny CCNN stage-1
cascade (``train_ccnn_stage``), both through ``common.training.train_model``; a third
process trains the same model on one worker (default strategy) with the same global
batch and seed. Each process is ``tests/multiworker_worker.py`` and writes its own loss
history and a fingerprint of its final weights. Checked:

* the cluster run completes on both workers with 2 replicas in sync, worker 0 is the
  only chief, both workers end with bit-identical weights and report the same losses
  (synchronous data parallelism);
* the chief wrote the run directory (checkpoints up to the last step, ``config.json``
  with 2 replicas, ``history.json``, ``model.keras``) and the non-chief's scratch copy
  under ``run_dir/.workers`` is gone;
* the loss trend matches one worker. The two runs cannot see the same batches (each
  worker reads every second record and draws its own shuffles), so the losses are
  compared as trends, each the mean of ``WINDOW`` logged steps: in both runs the loss
  at the end is below ``TREND`` x the loss at the start, and the final losses (and the
  final validation errors) of the two runs are within a factor ``TOLERANCE``.

Every process runs under a deadline and is killed with its process group in a
``finally`` block; when one worker of a cluster dies, its peer (which would wait for
it forever inside a collective op) is killed at once; each worker also ends itself
after ``--max_seconds``, so none outlives a killed test run. The workers talk over
127.0.0.1 only: free ports come from binding port 0 there, and proxy variables are
removed so that gRPC connects directly (TensorFlow's gRPC server itself listens on
the port of every interface; it offers no option to bind one address).

The package trainers are also run with the strategy *name* ``"multi_worker"`` (what
``python -m msrrn_tf.train --strategy=multi_worker`` does): they must create the
strategy before any TensorFlow op runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from common.synthetic import SyntheticFaceConfig, ensure_synthetic_dataset

pytestmark = pytest.mark.slow

WORKER = pathlib.Path(__file__).resolve().with_name("multiworker_worker.py")
MODELS = ("msrrn", "ccnn")
NUM_POINTS = {"msrrn": 68, "ccnn": 5}
STEPS = {"msrrn": 50, "ccnn": 30}
"""Training steps per model: enough for the loss to fall well below ``TREND``."""
GLOBAL_BATCH = 16
SEED = 0
SPLITS = {"train": 64, "val": 16}
IMAGE_SIZE = 64
WINDOW = 5
"""Logged steps averaged for the "start" and "end" losses (single steps are noisy)."""
TREND = 0.7
"""The end loss must be below this fraction of the start loss, in every run."""
TOLERANCE = 1.5
"""Largest ratio between the final 2-worker and 1-worker losses (and val errors)."""
DEADLINE_S = 240
"""Hard limit for all training processes together (they run concurrently)."""
LOG_TAIL = 4000
KNOWN_BUG = "Collective ops must be configured at program startup"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy",
                   "HTTP_PROXY", "HTTPS_PROXY", "GRPC_PROXY", "ALL_PROXY")


# ---------------------------------------------------------------------------
# Processes.

def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all held until all are known)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return ports


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


@dataclasses.dataclass
class Job:
    """One worker process: its command, log, result file and fate."""

    name: str
    group: str
    args: list[str]
    env: dict[str, str]
    log: pathlib.Path
    out: pathlib.Path
    process: subprocess.Popen | None = None
    returncode: int | None = None
    note: str = ""

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(WORKER), *self.args, f"--out={self.out}"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # its own process group, killed as a whole

    def kill(self, note: str) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.note = self.note or note
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
            self.returncode = self.process.returncode

    def result(self) -> dict:
        """The worker's JSON record; fails the test with the log tail if it has none."""
        if self.returncode != 0 or not self.out.is_file():
            tail = self.log.read_text(errors="replace")[-LOG_TAIL:] if self.log.is_file() else ""
            pytest.fail(f"{self.name}: exit code {self.returncode} {self.note}\n{tail}")
        return json.loads(self.out.read_text())


def run_jobs(jobs: list[Job], deadline_s: float) -> float:
    """Runs ``jobs`` concurrently until all end or ``deadline_s`` passes.

    A job that fails takes down the other jobs of its group (cluster peers block in
    collective ops until they are killed). Returns the wall time.
    """
    start = time.monotonic()
    try:
        for job in jobs:
            job.start()
        while True:
            running = [job for job in jobs if job.process.poll() is None]
            for job in jobs:
                if job.process.poll() not in (None, 0):
                    for peer in jobs:
                        if peer.group == job.group and peer is not job:
                            peer.kill(f"(killed: {job.name} failed)")
            if not running:
                break
            if time.monotonic() - start > deadline_s:
                for job in running:
                    job.kill(f"(killed after the {deadline_s} s deadline)")
                break
            time.sleep(0.25)
    finally:
        for job in jobs:
            job.kill("(killed: the test was interrupted)")
    return time.monotonic() - start


def worker_env(config: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in PROXY_VARIABLES and k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    if config is not None:
        env["TF_CONFIG"] = config
    return env


def model_args(data: dict[str, str], model: str, run_dir: pathlib.Path, steps: int
               ) -> list[str]:
    return [f"--model={model}", f"--data={data[model]}", f"--run_dir={run_dir}",
            f"--steps={steps}", f"--batch_size={GLOBAL_BATCH}", f"--seed={SEED}",
            f"--max_seconds={DEADLINE_S + 30}"]  # no orphan outlives a killed test


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """Tiny synthetic data sets: 64 training and 16 validation faces of 64 x 64 pixels."""
    cache = tmp_path_factory.mktemp("multiworker-data")
    config = SyntheticFaceConfig(image_size=IMAGE_SIZE)
    return {model: ensure_synthetic_dataset(NUM_POINTS[model], SPLITS, seed=SEED,
                                            cache_dir=str(cache), config=config)
            for model in MODELS}


# ---------------------------------------------------------------------------
# The runs: both models, one 2-worker cluster and one single worker each, at once.

@pytest.fixture(scope="module")
def runs(tmp_path_factory, data) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("multiworker")
    jobs: list[Job] = []
    for model in MODELS:
        ports = free_ports(2)
        for index in range(2):
            jobs.append(Job(
                name=f"{model} worker {index}", group=f"{model}-cluster",
                args=[*model_args(data, model, root / f"{model}-two", STEPS[model]),
                      "--strategy=multi_worker"],
                env=worker_env(tf_config(ports, index)),
                log=root / f"{model}-two-{index}.log", out=root / f"{model}-two-{index}.json"))
        jobs.append(Job(
            name=f"{model} single worker", group=f"{model}-single",
            args=[*model_args(data, model, root / f"{model}-one", STEPS[model]),
                  "--strategy=default"],
            env=worker_env(None), log=root / f"{model}-one.log", out=root / f"{model}-one.json"))
        # The known bug below, in a one-worker cluster (it fails within seconds).
        jobs.append(Job(
            name=f"{model} strategy by name", group=f"{model}-by-name",
            args=[*model_args(data, model, root / f"{model}-by-name", 2),
                  "--strategy=multi_worker", "--select=late"],
            env=worker_env(tf_config(free_ports(1), 0)),
            log=root / f"{model}-by-name.log", out=root / f"{model}-by-name.json"))
    seconds = run_jobs(jobs, DEADLINE_S)
    print(f"\nmulti-worker runs: {seconds:.0f} s wall for {len(jobs)} processes")
    by_model: dict[str, dict] = {}
    for model in MODELS:
        mine = [job for job in jobs if job.name.startswith(model)]
        by_model[model] = {
            "workers": [job for job in mine if job.group.endswith("cluster")],
            "single": next(job for job in mine if job.group.endswith("single")),
            "by_name": next(job for job in mine if job.group.endswith("by-name")),
            "run_dir": root / f"{model}-two" / ("stage1" if model == "ccnn" else ""),
        }
    return by_model


def _window_means(losses: list[float]) -> tuple[float, float]:
    values = np.asarray(losses, np.float64)
    return float(values[:WINDOW].mean()), float(values[-WINDOW:].mean())


def _val_error(history: dict) -> float:
    keys = sorted(k for k in history if k.startswith("val_nme"))
    assert keys, f"no validation error in the history: {sorted(history)}"
    return float(history[keys[0]][-1])


@pytest.mark.parametrize("model", MODELS)
def test_two_workers_train_in_sync(runs, model):
    workers = [job.result() for job in runs[model]["workers"]]
    for index, record in enumerate(workers):
        assert record["multi_worker"] and record["num_replicas"] == 2
        assert record["task"] == ["worker", index]
        assert record["is_chief"] == (index == 0)
        assert record["steps_done"] == STEPS[model]
        assert record["history"]["step"] == list(range(1, STEPS[model] + 1))
    chief, other = workers
    # One all-reduced gradient per step: both replicas hold the same weights and
    # every reduced loss is the same number on both workers.
    assert chief["weights"] == other["weights"]
    np.testing.assert_allclose(other["history"]["loss"], chief["history"]["loss"],
                               rtol=1e-6)
    assert _val_error(other["history"]) == _val_error(chief["history"])
    print(f"\n{model}: workers trained in {chief['train_seconds']:.0f} s and "
          f"{other['train_seconds']:.0f} s (process {chief['seconds']:.0f} s)")


@pytest.mark.parametrize("model", MODELS)
def test_chief_writes_the_run_directory(runs, model):
    chief = runs[model]["workers"][0].result()
    runs[model]["workers"][1].result()
    run_dir: pathlib.Path = runs[model]["run_dir"]
    index = (run_dir / "checkpoints" / "checkpoint").read_text()
    assert f'model_checkpoint_path: "ckpt-{STEPS[model]}"' in index
    record = json.loads((run_dir / "config.json").read_text())
    assert record["training"]["num_replicas"] == 2
    assert record["training"]["strategy"] == chief["strategy"]
    history = json.loads((run_dir / "history.json").read_text())
    assert history["step"][-1] == STEPS[model]
    assert (run_dir / "model.keras").is_file()
    # The non-chief saved its throw-away checkpoints under .workers/ and removed them.
    assert not (run_dir / ".workers" / "worker_1").exists()
    assert not list(run_dir.glob("**/*.tmp-*")), "a temporary file was left behind"


@pytest.mark.parametrize("model", MODELS)
def test_two_workers_follow_the_one_worker_loss_trend(runs, model):
    two = runs[model]["workers"][0].result()
    one = runs[model]["single"].result()
    assert one["num_replicas"] == 1 and one["steps_done"] == STEPS[model]
    trends = {}
    for name, record in (("1 worker", one), ("2 workers", two)):
        start, end = _window_means(record["history"]["loss"])
        trends[name] = (start, end)
        assert end < TREND * start, (
            f"{model}, {name}: loss {start:.4f} -> {end:.4f} did not fall below "
            f"{TREND} x the start in {STEPS[model]} steps")
    ratio = trends["2 workers"][1] / trends["1 worker"][1]
    assert 1 / TOLERANCE < ratio < TOLERANCE, (
        f"{model}: final loss 2 workers / 1 worker = {ratio:.2f}, trends {trends}")
    val_ratio = _val_error(two["history"]) / _val_error(one["history"])
    assert 1 / TOLERANCE < val_ratio < TOLERANCE, (
        f"{model}: final validation NME 2 workers / 1 worker = {val_ratio:.2f}")
    print(f"\n{model}: loss start -> end {trends}; final ratio {ratio:.2f}, "
          f"val NME ratio {val_ratio:.2f}")


# ---------------------------------------------------------------------------
# The strategy *name* must be resolved before TensorFlow starts.

@pytest.mark.parametrize("model", MODELS)
def test_strategy_name_multi_worker(runs, model):
    """The package trainers given ``strategy="multi_worker"`` (a one-worker cluster)."""
    job = runs[model]["by_name"]
    log = job.log.read_text(errors="replace") if job.log.is_file() else ""
    if job.returncode != 0 and KNOWN_BUG not in log:
        raise AssertionError(f"{job.name} failed for another reason than the known bug "
                             f"(exit code {job.returncode} {job.note}):\n{log[-LOG_TAIL:]}")
    record = job.result()
    assert record["multi_worker"] and record["steps_done"] == 2
