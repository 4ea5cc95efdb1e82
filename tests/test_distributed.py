"""Two worker processes on localhost (MultiWorkerMirroredStrategy, CPU) train to the weights of one
process with the same global batch (fails without tf_gpt2.distribute's fixes to Keras), and so does `--strategy
mirrored` (on a CPU, one replica)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tf_gpt2.data import prepare


def _free_ports(n):
    """n distinct free ports, held open together while they are chosen (no port is handed out twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _model_weights(run_dir):
    with np.load(os.path.join(run_dir, "checkpoint.npz")) as f:
        names = json.loads(str(f["meta"]))["variables"]
        return np.concatenate([f[f"v{i}"].ravel() for i, n in enumerate(names) if n.startswith("gpt2/")])


def test_two_workers_match_one_process(tmp_path):
    (tmp_path / "text.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 80)
    prepare(str(tmp_path / "text.txt"), str(tmp_path / "data"), vocab="char", verbose=False)
    command = [sys.executable, "-m", "tf_gpt2.cli", "train", "--data", str(tmp_path / "data"),
               "--preset", "gpt2-tiny", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--n-positions", "64",
               "--steps", "6", "--eval-interval", "3", "--batch-size", "4", "--block-size", "32",
               "--eval-batches", "1", "--sample-tokens", "0", "--warmup-steps", "2", "--grad-clip", "1",
               "--remat"]  # recomputation under tf.distribute: the same weights
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # Without XLA, as the workers compile on a CPU (tf_gpt2.devices): the same program on one replica and on two.
    single = subprocess.run(command + ["--out", str(tmp_path / "single"), "--no-xla"], env=env, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    # --strategy mirrored takes every GPU of the machine; without one, a single replica on the CPU, the same program
    mirrored = subprocess.run(command + ["--out", str(tmp_path / "mirrored"), "--strategy", "mirrored"], env=env,
                              capture_output=True, text=True, timeout=600)
    assert mirrored.returncode == 0, mirrored.stderr[-2000:]
    assert "this distributed run compiles without XLA" in mirrored.stdout
    with open(tmp_path / "mirrored" / "run.json") as f:
        assert json.load(f)["replicas"] == 1

    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    workers = [
        subprocess.Popen(command + ["--out", str(tmp_path / f"worker{i}"), "--strategy", "multiworker"],
                         env={**env,
                              "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]

    for i in range(2):  # the workers formed one cluster (alone, each would reach the single process's weights)
        with open(tmp_path / f"worker{i}" / "run.json") as f:
            assert json.load(f)["replicas"] == 2
    one = _model_weights(tmp_path / "single")
    w0, w1 = _model_weights(tmp_path / "worker0"), _model_weights(tmp_path / "worker1")
    np.testing.assert_array_equal(w0, w1)  # synchronous replicas hold one set of weights
    diff = np.abs(w0 - one)
    # Summation order differs, so equal up to float noise (1.8e-6 mean, 8.5e-6 at most: Intel Xeon, 2026-12-06; the
    # single process gives the same with XLA). Clipping each replica's
    # partial gradient (Keras' default) gives ~2e-5; training on different data
    # (e.g. each worker taking whole batches) moves the weights by ~4e-4 on average.
    print(f"two workers vs one process: mean |diff| {diff.mean():.1e}, max {diff.max():.1e}")
    assert diff.mean() < 5e-6 and diff.max() < 1e-3, (diff.mean(), diff.max())
    mirrored = np.abs(_model_weights(tmp_path / "mirrored") - one)  # one replica: the same program (measured: equal)
    print(f"mirrored (one replica) vs no strategy: mean |diff| {mirrored.mean():.1e}, max {mirrored.max():.1e}")
    assert mirrored.max() < 1e-6, (mirrored.mean(), mirrored.max())


def test_only_a_run_of_one_process_notes_ctrl_c():
    """A run of many processes keeps Python's Ctrl-C: noted, each would stop at its own batch and the others wait
    in their collectives. A multiworker worker's placement is of one process (each writes its own --out)."""
    import contextlib

    from tf_gpt2.devices import Placement
    from tf_gpt2.train_config import TrainConfig
    from tf_gpt2.training import listens_for_ctrl_c

    one = Placement(scope=contextlib.nullcontext, replicas=1)
    assert listens_for_ctrl_c(TrainConfig(), one)
    assert listens_for_ctrl_c(TrainConfig(strategy="mirrored"), one)  # one process, its devices
    assert not listens_for_ctrl_c(TrainConfig(strategy="multiworker"), one)
    assert not listens_for_ctrl_c(TrainConfig(distribution="data", num_processes=2, process_id=0,
                                              coordinator="localhost:1"), Placement(contextlib.nullcontext, 2, 2))
