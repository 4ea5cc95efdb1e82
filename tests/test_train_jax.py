"""`tf-gpt2 train` on the JAX backend with keras.distribution: the weights split over a 2x2 mesh of virtual CPU
devices, in one process and in two processes on localhost (JAX's distributed runtime, CPU collectives), and the
batch split over 4 devices (`--distribution data`), train to the weights of one device; a split run killed mid-way
resumes to the uninterrupted run's bits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_distributed import _free_ports, _model_weights
from test_training import kill_mid_run_then_resume

from tf_gpt2.data import prepare
from tf_gpt2.training import CHECKPOINT

pytest.importorskip("jax")

STEPS = 25  # for the killed run: long enough that the kill lands mid-run


def _command(data, out, *flags, steps=STEPS):
    return [sys.executable, "-m", "tf_gpt2.cli", "train", "--data", str(data), "--out", str(out),
            "--preset", "gpt2-tiny", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--n-positions", "64",
            "--vocab-multiple", "4", "--dropout", "0.1", "--steps", str(steps), "--eval-interval", "5",
            "--batch-size", "4", "--block-size", "32", "--eval-batches", "1", "--sample-tokens", "0",
            "--warmup-steps", "5", "--remat", *flags]  # every run recomputes its blocks (dropout included)


def _env(devices, cache=None):
    """A JAX run on `devices` virtual CPU devices; `cache`, a folder where runs of one program share its compiled
    form (JAX's persistent compilation cache: the same executable, compiled once)."""
    return {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
            "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}",
            **({"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
               if cache else {})}


def _run(command, env):
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _record(out):
    with open(os.path.join(out, "run.json")) as f:
        return json.load(f)


def test_split_runs_on_jax_match_one_device_and_resume_bit_exactly(tmp_path):
    (tmp_path / "text.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 80)
    data = tmp_path / "data"
    prepare(str(tmp_path / "text.txt"), str(data), vocab="char", verbose=False)
    split = ("--distribution", "model", "--mesh", "2x2")

    # A warmup to the last step, said by the CLI: process 0 of two says it without asking JAX its index, which
    # started JAX before its distributed runtime and failed every such run
    warmup = ("--warmup-steps", "9")
    _run(_command(data, tmp_path / "one", *warmup, steps=10), _env(1))
    _run(_command(data, tmp_path / "split", *split), _env(4, tmp_path / "compiled"))
    assert _record(tmp_path / "split")["devices"] == 4 and _record(tmp_path / "split")["replicas"] == 2
    assert _record(tmp_path / "split")["settings"]["model"]["remat"] is True  # recorded, so a resume keeps it

    # Two processes of two devices each: one batch row of the mesh per process, the weights split within it.
    address = f"localhost:{_free_ports(1)[0]}"
    processes = [subprocess.Popen(_command(data, tmp_path / "two", *split, *warmup, "--coordinator", address,
                                           "--num-processes", "2", "--process-id", str(i), steps=10),
                                  env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    said = []
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        said.append("note: the learning rate warms up over 9 steps" in err)
    assert said == [True, False]
    # They formed one run (alone, each would train on the whole batch and reach the same weights).
    assert _record(tmp_path / "two")["processes"] == 2 and _record(tmp_path / "two")["devices"] == 4

    # Measured: 4.7e-8 at most (4.9e-10 mean) after 20 steps (10 now), summation order alone; the bound is 200x that.
    diff = np.abs(_model_weights(tmp_path / "two") - _model_weights(tmp_path / "one"))
    print(diff.mean(), diff.max())
    assert diff.max() <= 1e-5, (diff.mean(), diff.max())

    # One process given another learning rate: each trained with its own, and the model written was of both (no
    # error); now both refuse, naming the setting, before any step
    address = f"localhost:{_free_ports(1)[0]}"
    processes = [subprocess.Popen(_command(data, tmp_path / "mixed", *split, *warmup, "--coordinator", address,
                                           "--num-processes", "2", "--process-id", str(i), *rate, steps=10),
                                  env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i, rate in enumerate(((), ("--learning-rate", "3e-2")))]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 2 and err.splitlines()[-1] == (
            "tf-gpt2 train: error: the processes of this run were given other settings (learning_rate, "
            "min_learning_rate): give each one the same command, its --process-id aside"), err[-3000:]
    assert not (tmp_path / "mixed" / CHECKPOINT).exists()

    def two_processes(flags_of):  # each process's own flags, given process i; what each said last
        address = f"localhost:{_free_ports(1)[0]}"
        processes = [subprocess.Popen(_command(data, *flags_of(i), *split, "--coordinator", address, "--process-id",
                                               str(i), steps=10), env=_env(2), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for i in range(2)]
        said = [process.communicate(timeout=600)[1] for process in processes]
        assert [process.returncode for process in processes] == [2, 2], said
        return [each.splitlines()[-1] for each in said]

    # A process that refuses its own placement (here, a count of processes the coordinator does not have: it trained
    # with two, without a word): the other waited for it, then failed in JAX's words ("GetKeyValue() timed out")
    assert two_processes(lambda i: (tmp_path / "refused", "--num-processes", str(2 + i))) == [
        "tf-gpt2 train: error: process 1 of this run refused it (its own error says why): stopped here too",
        "tf-gpt2 train: error: --num-processes 3, but 2 processes joined this run: give every process the same count"]
    # Each process its own --out, which may differ (a mount point), but one holds the run's checkpoint and the other
    # none: one resumed and the other started over, and they failed in a collective that did not match
    assert two_processes(lambda i: (tmp_path / ("two", "elsewhere")[i], "--num-processes", "2")) == [
        "tf-gpt2 train: error: the processes of this run found other checkpoints in their --out (process 0: step 10, "
        "process 1: none): --out must be storage every process sees, the same folder (a shared disk, NFS, a mounted "
        "bucket)"] * 2

    # --distribution data: the whole model on each of 4 devices, the batch split over them
    _run(_command(data, tmp_path / "replicated", "--distribution", "data", *warmup, steps=10), _env(4))
    assert _record(tmp_path / "replicated")["devices"] == 4 and _record(tmp_path / "replicated")["replicas"] == 4
    diff = np.abs(_model_weights(tmp_path / "replicated") - _model_weights(tmp_path / "one"))
    print(diff.mean(), diff.max())
    assert diff.max() <= 1e-5, (diff.mean(), diff.max())

    # Killed after a checkpoint, then the same command again: the uninterrupted run's weights, moments and RNG.
    kill_mid_run_then_resume(_command(data, tmp_path / "killed", *split), _env(4, tmp_path / "compiled"),
                             after_step=10, steps=STEPS,
                             uninterrupted=tmp_path / "split" / CHECKPOINT)


def test_a_placement_the_backend_or_the_model_cannot_take_is_refused_by_name(monkeypatch):
    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.devices import Mesh, Placement, place_run
    from tf_gpt2.training import TrainConfig

    with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):  # this process runs TensorFlow
        place_run(TrainConfig(distribution="model"), GPT2.get_layout_map)
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")  # a cluster without a distribution: not ignored
    with pytest.raises(ValueError, match="KERAS_DISTRIBUTION_NUM_PROCESSES set: .* needs --distribution"):
        place_run(TrainConfig(), GPT2.get_layout_map)
    monkeypatch.delenv("KERAS_DISTRIBUTION_NUM_PROCESSES")
    # tf.distribute's cluster, TF_CONFIG: a worker of two without --strategy multiworker trained alone, writing its
    # files as the lead worker; --strategy multiworker without a cluster trained alone as "a distributed run".
    workers = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(workers))
    with pytest.raises(ValueError, match="TF_CONFIG names a cluster of 2 workers, but this process would train alone"):
        place_run(TrainConfig(), GPT2.get_layout_map)
    monkeypatch.setenv("TF_CONFIG", "{cluster")
    with pytest.raises(ValueError, match="TF_CONFIG is not a JSON object with a 'cluster' of tasks: '{cluster'"):
        place_run(TrainConfig(), GPT2.get_layout_map)
    for alone in ({}, {"task": {"type": "worker", "index": 0}}, {"cluster": {"worker": ["localhost:1"]}},
                  {"cluster": {"ps": ["localhost:1", "localhost:2"], "worker": ["localhost:3"]}}):
        monkeypatch.setenv("TF_CONFIG", json.dumps(alone))  # one worker or none, as tf.distribute counts them
        assert place_run(TrainConfig(), GPT2.get_layout_map).replicas == 1
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["localhost:1"], "worker": ["localhost:2"]}}))
    with pytest.raises(ValueError, match="cluster of 2 workers"):  # the chief is one of them
        place_run(TrainConfig(strategy="mirrored"), GPT2.get_layout_map)
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="multiworker trains over the workers TF_CONFIG names, and it names none"):
        place_run(TrainConfig(strategy="multiworker"), GPT2.get_layout_map)
    # On JAX, in a process of its own (JAX joins a run of many processes only before its first computation):
    # TF_CONFIG's cluster trained alone, as process 0; many processes without process 0's address failed in JAX's
    # words ("coordinator_address should be defined"), naming no flag.
    code = ("import os\nfrom tf_gpt2 import GPT2\nfrom tf_gpt2.devices import place_run\n"
            "from tf_gpt2.training import TrainConfig\n"
            "for settings in ({}, {'distribution': 'data', 'num_processes': 2, 'process_id': 1},\n"
            "                 {'distribution': 'data', 'num_processes': 2, 'coordinator': 'localhost:1'}):\n"
            "    try:\n        place_run(TrainConfig(**settings), GPT2.get_layout_map)\n"
            "    except ValueError as e:\n        print(e)\n    os.environ.pop('TF_CONFIG', None)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
                              "TF_CONFIG": json.dumps(workers)})
    said = run.stdout.splitlines()
    assert len(said) == 3, run.stdout + run.stderr[-3000:]
    assert said[0].startswith("TF_CONFIG names a cluster of 2 workers, but this process would train alone: on jax, "
                              "a run of many processes is --distribution data|model"), said
    assert said[1] == "a run of many processes needs process 0's host:port: give --coordinator (or " \
                      "KERAS_DISTRIBUTION_JOB_ADDRESSES)", said
    assert said[2] == "a run of many processes needs this process's index: give --process-id (or " \
                      "KERAS_DISTRIBUTION_PROCESS_ID)", said
    for bad, message in [(dict(distribution="pipeline"), "distribution must be one of"),
                         (dict(mesh="2x2"), "need a distribution"),
                         (dict(distribution="model", mesh="2by2"), "BATCHxMODEL"),
                         (dict(distribution="data", strategy="mirrored"), "exclude each other"),
                         (dict(distribution="data", num_processes=2, process_id=2), "process_id"),
                         (dict(distribution="data", num_processes=0), "num_processes must be a positive integer"),
                         (dict(distribution="model", mesh="²x1"), "BATCHxMODEL"),  # (int() failed on it)
                         (dict(process_id=1), "need a distribution"),
                         (dict(distribution="data", coordinator="nohost"), "coordinator is process 0's host:port, got "
                                                                           "'nohost'"),  # (JAX: an IndexError)
                         (dict(distribution="data", process_id=1),  # alone, it would run as process 0
                          "process_id 1 names one process of many: give num_processes and the coordinator too")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)
    split = Placement(scope=None, replicas=2, mesh=Mesh(2, 2))
    with pytest.raises(ValueError, match="27 token-embedding rows .* mesh 2x2: .* multiple of 2 .*--vocab-multiple"):
        split.check(GPT2Config(vocab_size=27, n_embd=32, n_head=2, n_layer=1, n_positions=8))
    with pytest.raises(ValueError, match=r"50304 token-embedding rows .* mesh 1x5: .* multiple of 5 \(pass --vocab-mul"
                                         r"tiple 320\)"):  # (it said 64, the multiple already given)
        Placement(scope=None, replicas=1, mesh=Mesh(1, 5)).check(
            GPT2Config(vocab_size=50257, vocab_multiple=64, n_embd=320, n_head=5, n_layer=1, n_positions=8))
    with pytest.raises(ValueError, match="30 n_embd .* mesh 1x4: .* multiple of 4"):
        Placement(scope=None, replicas=1, mesh=Mesh(1, 4)).check(
            GPT2Config(vocab_size=28, n_embd=30, n_head=2, n_layer=1, n_positions=8))
    split.check(GPT2Config(vocab_size=27, vocab_multiple=4, n_embd=32, n_head=2, n_layer=1, n_positions=8))


def test_ctrl_c_stops_a_jax_run_in_one_line_with_status_130(tmp_path):
    """On JAX the host waits for each step in Keras' conversion of its logs, which ignored a Ctrl-C's
    KeyboardInterrupt raised there (a bare except): the run trained on to its end. Now noted, and raised at the end
    of its batch."""
    import signal

    (tmp_path / "text.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 80)
    prepare(str(tmp_path / "text.txt"), str(tmp_path / "data"), vocab="char", verbose=False)
    command = _command(tmp_path / "data", tmp_path / "run", steps=100_000)
    run = subprocess.Popen(command, env={**_env(1), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True,  # (as from a terminal, if the suite ignores SIGINT)
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    rounds_seen = 0
    for line in run.stdout:  # training, past its first round (a line a round, in a pipe)
        rounds_seen += "tok/s" in line
        if rounds_seen == 2:
            run.send_signal(signal.SIGINT)
            break
    try:
        output, status = run.communicate(timeout=120)[0], run.returncode
    finally:
        run.kill()
    assert status == 130 and output.strip().splitlines()[-1] == "tf-gpt2 train: interrupted", output[-2000:]
    assert not (tmp_path / "run" / "model.keras").exists()


def test_float16_on_jaxs_cpu_backend_is_refused_before_tokenizing_and_said_in_eval(tmp_path):
    """XLA's CPU matrix products take no float16 with a float32 result: a JAX run in mixed_float16 on a CPU tokenized
    its text, then failed in XLA's words ("The precision 'F16_F16_F32' is not supported by dot_general on CPU");
    `eval` of a float16 model too. The run is refused first; eval's error says what it means."""
    (tmp_path / "text.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
    code = ("import sys\nfrom tf_gpt2 import GPT2, GPT2Config\nfrom tf_gpt2.cli import main\n"
            f"GPT2(GPT2Config.from_preset('gpt2-tiny'), dtype='mixed_float16').save({str(tmp_path / 'h.keras')!r})\n"
            f"text = {str(tmp_path / 'text.txt')!r}\n"
            f"print(main(['train', '--data', text, '--out', {str(tmp_path / 'run')!r}, '--preset', 'gpt2-tiny', "
            "'--steps', '2', '--precision', 'mixed_float16', '--vocab', 'char']), file=sys.stderr)\n"
            f"print(main(['eval', text, '--model', {str(tmp_path / 'h.keras')!r}, '--context', '16']), "
            "file=sys.stderr)\n")
    run = subprocess.run([sys.executable, "-c", code], env=_env(1), capture_output=True, text=True, timeout=300)
    said = [line for line in run.stderr.splitlines() if line.startswith("tf-gpt2 ") or line in ("2", "0")]
    assert said == [
        "tf-gpt2 train: error: a run in float16 on JAX's CPU backend: XLA's CPU matrix products take no float16 "
        "inputs with a float32 result, which Keras' attention asks for; there, train in mixed_bfloat16 or float32, "
        "and run a float16 model on the TensorFlow backend (JAX runs float16 on a GPU)", "2",
        "tf-gpt2 eval: error: The precision 'F16_F16_F32' is not supported by dot_general on CPU (float16 on JAX's "
        "CPU backend: XLA's CPU matrix products take no float16 inputs with a float32 result, which Keras' attention "
        "asks for; there, train in mixed_bfloat16 or float32, and run a float16 model on the TensorFlow backend (JAX "
        "runs float16 on a GPU))", "2"], run.stderr[-3000:]
    assert not (tmp_path / "run" / "data").exists()
