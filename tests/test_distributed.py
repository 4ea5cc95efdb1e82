"""Two worker processes on localhost (MultiWorkerMirroredStrategy, CPU) train to the weights of one
process with the same global batch (fails without tf_gpt2.distribute's fixes to Keras), and so does `--strategy
mirrored` over two devices (the CPU split in two, as a machine's two GPUs)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tf_gpt2.data import prepare
from tf_gpt2.training import CHECKPOINT


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


# `tf-gpt2 ...` with TensorFlow's CPU split into two devices, which MirroredStrategy takes as a machine's two GPUs
OVER_TWO_DEVICES = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
every_gpu = tf.distribute.MirroredStrategy
tf.distribute.MirroredStrategy = lambda: every_gpu(["/cpu:0", "/cpu:1"])
from tf_gpt2.cli import main
sys.exit(main(sys.argv[1:]))
"""


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
    # --strategy mirrored takes every GPU of the machine: here two devices (it failed on any two: Keras averaged the
    # first batch's token ids into floats)
    mirrored = subprocess.run([sys.executable, "-c", OVER_TWO_DEVICES, *command[3:], "--out",
                               str(tmp_path / "mirrored"), "--strategy", "mirrored"], env=env,
                              capture_output=True, text=True, timeout=600)
    assert mirrored.returncode == 0, mirrored.stderr[-2000:]
    assert "this distributed run compiles without XLA" in mirrored.stdout
    with open(tmp_path / "mirrored" / "run.json") as f:
        assert json.load(f)["replicas"] == 2
    # Refused over two replicas, where the run is placed (before its text is read or anything written): unequal
    # parts weighed rows unequally, each replica judged its own float16 overflow (a float16 LoRA base's too),
    # accumulation failed at once. The first again as the command, on raw text: status 2, nothing written.
    refusals = OVER_TWO_DEVICES.replace("sys.exit(main(sys.argv[1:]))", """
from tf_gpt2.devices import place_run
from tf_gpt2.train_config import TrainConfig
for settings in (dict(batch_size=3), dict(precision="mixed_float16"),
                 dict(base_dtype="float16", lora_rank=2, init_from="gpt2"), dict(grad_accum=2)):
    try:
        place_run(TrainConfig(strategy="mirrored", **{"batch_size": 4, **settings}), None)
    except ValueError as e:
        print(e)
import tensorflow as tf  # as on a machine with GPUs, where XLA is on unless --no-xla turns it off
listed = tf.config.list_physical_devices
tf.config.list_physical_devices = lambda kind=None: ["a GPU"] if kind == "GPU" else listed(kind)
for xla in (True, False):
    try:
        print("placed", place_run(TrainConfig(strategy="mirrored", batch_size=4, grad_accum=2, jit_compile=xla),
                                  None).replicas)
    except ValueError as e:
        print(e)
tf.config.list_physical_devices = listed
print("status", main(sys.argv[1:]))
""")
    said = subprocess.run([sys.executable, "-c", refusals, "train", "--data", str(tmp_path / "text.txt"), "--out",
                           str(tmp_path / "refused"), "--strategy", "mirrored", "--batch-size", "3"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert not (tmp_path / "refused").exists(), os.listdir(tmp_path / "refused")
    assert said.stderr.strip().endswith("tf-gpt2 train: error: batch_size 3 must be a multiple of the 2 replicas "
                                        "--strategy mirrored trains on: each takes an equal part of the batch")
    float16 = ("float16 under --strategy mirrored (2 replicas): Keras' loss scaling decides from each replica's own "
               "gradients whether a step overflowed, so one replica applies a step another skips. Train in "
               "mixed_bfloat16 or float32")
    assert [line for line in said.stdout.splitlines() if not line.startswith("note: ")] == [
        "batch_size 3 must be a multiple of the 2 replicas --strategy mirrored trains on: each takes an equal part of "
        "the batch",
        float16, float16,
        "--grad-accum 2 under --strategy mirrored without XLA (2 replicas): Keras applies the accumulated update "
        "inside a conditional, which tf.distribute cannot synchronise across replicas (the first step fails). Give "
        "the whole batch as --batch-size: each replica takes its part", "placed 2",
        "--grad-accum 2 under --strategy mirrored without XLA (2 replicas): Keras applies the accumulated update "
        "inside a conditional, which tf.distribute cannot synchronise across replicas (the first step fails). Give "
        "the whole batch as --batch-size: each replica takes its part", "status 2"], said.stdout + said.stderr[-2000:]

    def two_workers(outs, flags=((), ())):  # each worker's --out and flags of its own; each one's (status, stderr)
        cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
        workers = [subprocess.Popen(command + ["--out", str(tmp_path / out), "--strategy", "multiworker", *flag],
                                    env={**env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                                         "task": {"type": "worker", "index": i}})},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for i, (out, flag) in enumerate(zip(outs, flags))]
        said = [worker.communicate(timeout=600)[1] for worker in workers]
        return [(worker.returncode, err) for worker, err in zip(workers, said)]

    for status, err in two_workers(("worker0", "worker1")):
        assert status == 0, err[-3000:]
    # A worker given another learning rate trained with its own, and the replicas' weights drifted apart (no error);
    # one whose --out held the run's checkpoint resumed it while the other started over: now both refuse, named,
    # before any step
    for status, err in two_workers(("mixed0", "mixed1"), ((), ("--learning-rate", "3e-3"))):
        assert status == 2 and err.splitlines()[-1] == (
            "tf-gpt2 train: error: the workers of this run were given other settings (learning_rate, "
            "min_learning_rate): give each one the same command, its TF_CONFIG and --out aside"), err[-3000:]
    assert not (tmp_path / "mixed0" / CHECKPOINT).exists() and not (tmp_path / "mixed1" / CHECKPOINT).exists()
    for status, err in two_workers(("worker0", "fresh")):
        assert status == 2 and err.splitlines()[-1] == (
            "tf-gpt2 train: error: the workers of this run found other checkpoints in their --out (worker 0: step 6, "
            "worker 1: none): each worker resumes its own copy of the run's checkpoint: give each the same one, or "
            "start the run over in new folders"), err[-3000:]

    for i in range(2):  # the workers formed one cluster (alone, each would reach the single process's weights)
        with open(tmp_path / f"worker{i}" / "run.json") as f:
            assert json.load(f)["replicas"] == 2
    one = _model_weights(tmp_path / "single")
    w0, w1 = _model_weights(tmp_path / "worker0"), _model_weights(tmp_path / "worker1")
    np.testing.assert_array_equal(w0, w1)  # synchronous replicas hold one set of weights
    diff = np.abs(w0 - one)
    # Summation order differs, so equal up to float noise (1.4e-10 mean, 1e-8 at most: AMD EPYC, 2026-12-07). The
    # clip's norm over the sparse position-embedding gradient all-reduced as it is (its pieces concatenated, not
    # added) gave 1.8e-6 mean; clipping each replica's partial gradient (Keras' default) gives ~2e-5; training on
    # different data (e.g. each worker taking whole batches) moves the weights by ~4e-4 on average.
    print(f"two workers vs one process: mean |diff| {diff.mean():.1e}, max {diff.max():.1e}")
    assert diff.mean() < 1e-7 and diff.max() < 1e-5, (diff.mean(), diff.max())
    mirrored = np.abs(_model_weights(tmp_path / "mirrored") - one)
    print(f"mirrored (two devices) vs no strategy: mean |diff| {mirrored.mean():.1e}, max {mirrored.max():.1e}")
    assert mirrored.mean() < 1e-7 and mirrored.max() < 1e-5, (mirrored.mean(), mirrored.max())


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
