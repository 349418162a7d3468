"""One training process of ``tests/test_multiworker.py`` (a helper, not a test module).

Trains a tiny MSRRN (``msrrn_tf.training.train_msrrn``) or a tiny CCNN stage-1 cascade
(``ccnn_tf.training.train_ccnn_stage``); both go through
``common.training.train_model``. With ``--strategy=multi_worker`` the process is one
worker of the cluster in the ``TF_CONFIG`` environment variable (set by the test).
Every process writes ``--out``, a JSON file with its own loss history, whether it is
the chief, the replica count and a fingerprint of its final weights (equal on all
workers of a synchronous run)::

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:p0", "127.0.0.1:p1"]},
                "task": {"type": "worker", "index": 0}}' \\
    python tests/multiworker_worker.py --model=msrrn --data=DIR --run_dir=DIR \\
        --steps=30 --out=worker0.json

``--select=startup`` (the documented use, see ``common/training.py``) creates the
strategy with ``common.training.select_strategy`` before any other TensorFlow op and
passes the object on; ``--select=late`` passes the strategy *name* to the package
trainer, as ``python -m msrrn_tf.train --strategy=multi_worker`` does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import threading
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: tests/ is sys.path[0]
    sys.path.insert(0, str(REPO_ROOT))

MODELS = ("msrrn", "ccnn")


def msrrn_config(batch_size: int):
    """A tiny MSRRN: two scales, two stages, the ``small`` widths. No rotations or
    flips, so that its loss falls clearly within a few dozen steps."""
    from msrrn_tf.config import MSRRNConfig

    return MSRRNConfig.preset("small", scales=(32, 64), num_stages=2, patch_size=8,
                             batch_size=batch_size, learning_rate=0.01,
                             max_rotation_deg=0.0, flip=False)


def ccnn_config(batch_size: int, seed: int):
    """The ``tiny`` CCNN (stage 1 is trained), with a learning rate for a short run."""
    from ccnn_tf.config import CCNNConfig

    return CCNNConfig.preset("tiny", batch_size=batch_size, learning_rate=0.05, momentum=0.9,
                           seed=seed)


def weights_fingerprint(model) -> str:
    """SHA-256 (16 hex digits) of every weight, in order, as float32 bytes."""
    import numpy as np

    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight, np.float32).tobytes())
    return digest.hexdigest()[:16]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--data", required=True, help="synthetic TFRecord folder")
    parser.add_argument("--run_dir", required=True, help="shared by all workers")
    parser.add_argument("--out", required=True, help="this process's JSON result")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=16, help="global batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", choices=("default", "multi_worker"),
                        default="multi_worker")
    parser.add_argument("--select", choices=("startup", "late"), default="startup")
    parser.add_argument("--checkpoint_every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (the test machine is small and shared)")
    parser.add_argument("--max_seconds", type=float, default=600.0,
                        help="exit with status 124 after this long, whatever happens "
                        "(a worker whose peer is gone waits in collective ops forever)")
    return parser.parse_args(argv)


def start_watchdog(seconds: float) -> None:
    """Ends this process after ``seconds`` even if the test that started it is gone."""
    def expire() -> None:
        print(f"multiworker_worker: no result after {seconds:.0f} s, exiting",
              file=sys.stderr, flush=True)
        os._exit(124)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start_watchdog(args.max_seconds)
    start = time.perf_counter()
    import tensorflow as tf

    from common import training

    # Both must happen before any other TensorFlow op (collective ops are configured
    # when the eager context starts).
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    strategy = (training.select_strategy(args.strategy) if args.select == "startup"
                else args.strategy)

    train_start = time.perf_counter()
    if args.model == "msrrn":
        from msrrn_tf.training import train_msrrn

        result = train_msrrn(
            msrrn_config(args.batch_size), data=args.data, run_dir=args.run_dir,
            steps=args.steps, val_split="val", checkpoint_every=args.checkpoint_every,
            log_every=1, strategy=strategy, schedule="constant", evaluate=False,
            export=False, seed=args.seed, verbose=False)
    else:
        import keras

        from ccnn_tf.training import train_ccnn_stage

        keras.utils.set_random_seed(args.seed)  # initial weights (train_msrrn seeds itself)
        result = train_ccnn_stage(
            ccnn_config(args.batch_size, args.seed), 1, data=args.data,
            run_dir=args.run_dir, steps=args.steps, strategy=strategy,
            checkpoint_every=args.checkpoint_every, log_every=1, val_split="val",
            val_limit=None, shuffle_buffer=64, verbose=False)
    train_seconds = time.perf_counter() - train_start

    if isinstance(strategy, str):
        strategy = result.model.distribute_strategy
    resolver = getattr(strategy, "cluster_resolver", None)
    record = {
        "model": args.model,
        "strategy": type(strategy).__name__,  # as common.training records it
        "multi_worker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
        "num_replicas": int(strategy.num_replicas_in_sync),
        "task": None if resolver is None else [resolver.task_type, resolver.task_id],
        "is_chief": training.is_chief(strategy),
        "steps_done": int(result.steps_done),
        "history": result.history,
        "weights": weights_fingerprint(result.model),
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - start,
    }
    tmp = f"{args.out}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
