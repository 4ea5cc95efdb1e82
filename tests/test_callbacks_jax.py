"""On JAX, `tf-gpt2 train`'s callbacks run one batch behind (`OneStepBehind`): the host reads a finished batch's
loss while the next one runs, instead of waiting for the batch it has just launched. Each batch still reaches every
callback whole and in order, with the same losses, and the NaN guard stops at the same batch, keeping the last good
checkpoint."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("jax")

SCRIPT = r"""
import json, sys
import keras, numpy as np
from tf_gpt2 import GPT2, GPT2Config
from tf_gpt2.training import StopOnNaN, fit_callbacks

class Record(keras.callbacks.Callback):
    # Each event with the number of batches launched when the callback saw it.
    def __init__(self, launched):
        super().__init__()
        self.launched, self.events = launched, []
    def on_train_batch_begin(self, batch, logs=None):
        self.events.append(["begin", batch, self.launched[0]])
    def on_train_batch_end(self, batch, logs=None):
        self.events.append(["end", batch, self.launched[0], float(logs["loss"])])
    def on_test_begin(self, logs=None):
        self.events.append(["validation", 0, self.launched[0]])
    def on_epoch_end(self, epoch, logs=None):
        self.events.append(["epoch_end", epoch, self.launched[0]])

def run(lagged, learning_rate, nan_batch=None):
    keras.utils.set_random_seed(0)
    model = GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=32, vocab_size=64))
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.make_train_function()
    launched, launch = [0], model.train_function
    def counted(state, iterator):
        launched[0] += 1
        return launch(state, iterator)
    model.train_function = counted
    record, guard = Record(launched), StopOnNaN()
    ids = np.random.default_rng(0).integers(0, 64, (24, 17)).astype("int32")
    callbacks = [record, guard]
    weights = np.ones((24, 16), "float32")
    if nan_batch is not None:  # a NaN loss at that batch of the first round
        weights[4 * nan_batch: 4 * nan_batch + 4] = np.nan
    if lagged:
        callbacks = fit_callbacks(callbacks, model, epochs=2, steps=6, verbose=0)
    history = model.fit(ids[:, :-1], ids[:, 1:], sample_weight=weights, batch_size=4, epochs=2, shuffle=False,
                        verbose=0, validation_data=(ids[:4, :-1], ids[:4, 1:]), callbacks=callbacks)
    return {"events": record.events, "went_bad": guard.went_bad, "history": history.history["loss"],
            "launched": launched[0]}

def train_into_nan(root):
    # tf-gpt2 train's own loop: a good run, then one whose loss goes to NaN; its checkpoint must stay as it was.
    import hashlib, os
    from tf_gpt2.data import prepare
    from tf_gpt2.train_config import TrainConfig
    from tf_gpt2.training import CHECKPOINT, train
    with open(os.path.join(root, "text.txt"), "w") as f:
        f.write("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 60)
    prepare(os.path.join(root, "text.txt"), os.path.join(root, "data"), vocab="char", verbose=False)
    settings = dict(out=os.path.join(root, "run"), data=os.path.join(root, "data"), preset="gpt2-tiny",
                    model=dict(n_layer=2, n_head=2, n_embd=32, n_positions=64), batch_size=4, block_size=32,
                    eval_batches=1, warmup_steps=1, sample_tokens=0, verbose=0)
    train(TrainConfig(steps=10, eval_interval=10, **settings))
    digest = lambda: hashlib.sha256(open(os.path.join(root, "run", CHECKPOINT), "rb").read()).hexdigest()
    good = digest()
    try:
        train(TrainConfig(steps=30, eval_interval=10, learning_rate=1e30, weight_decay=0.0, grad_clip=0.0,
                          resume_with_changes=True, **settings))
        message = None
    except FloatingPointError as e:
        message = str(e)
    return {"message": message, "kept": digest() == good}

out = {f"{lagged} {rate}": run(lagged, rate) for lagged in (False, True) for rate in (1e-3, 1e30)}
out.update({f"{lagged} nan at 5": run(lagged, 1e-3, nan_batch=5) for lagged in (False, True)})
out["train"] = train_into_nan(sys.argv[1])
from tf_gpt2.train_config import TrainConfig
from tf_gpt2.training import make_optimizer
tiny = GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=32, vocab_size=64))
out["clipnorm"] = [make_optimizer(tiny, TrainConfig(grad_clip=clip)).global_clipnorm for clip in (0.7, 0.0)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # The runs build one program again and again: JAX's persistent compilation cache compiles it once
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("compiled")),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path_factory.mktemp("jax"))], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def _rounds(events):
    """The events of each round, its end included."""
    ends = [i for i, e in enumerate(events) if e[0] == "epoch_end"]
    return [events[after + 1: end + 1] for after, end in zip([-1, *ends], ends)]


def test_callbacks_see_each_batch_after_the_next_is_launched_whole_in_order_and_unchanged(runs):
    plain, behind = runs["False 0.001"], runs["True 0.001"]
    for epoch, events in enumerate(_rounds(behind["events"])):
        assert [e[:2] for e in events] == [[kind, b] for b in range(6) for kind in ("begin", "end")] + [
            ["validation", 0], ["epoch_end", epoch]]
        for kind, batch, launched, *_ in events[:10]:  # batches 0-4: read once the next one was launched
            assert launched == 6 * epoch + batch + 2, (kind, batch, launched)
        assert [e[2] for e in events[10:]] == [6 * (epoch + 1)] * 4  # the last: before validation and the round's end
    # Keras alone hands a batch over as soon as it is launched (the host waits for it there).
    ends = [e for e in plain["events"] if e[0] == "end"]
    assert [e[2] for e in ends] == list(range(1, 13))
    # The same losses, batch by batch and per round.
    assert [e[3] for e in behind["events"] if e[0] == "end"] == [e[3] for e in ends]
    assert behind["history"] == plain["history"]


def test_the_nan_guard_stops_at_the_same_batch_one_batch_behind(runs):
    plain, behind = runs["False 1e+30"], runs["True 1e+30"]
    assert plain["went_bad"].startswith("the loss became") and behind["went_bad"] == plain["went_bad"]
    assert plain["launched"] < 12 and behind["launched"] == plain["launched"] + 1  # one batch more
    # The round's last batch: its NaN reaches the guard before validation, and no round follows.
    plain, behind = runs["False nan at 5"], runs["True nan at 5"]
    assert plain["went_bad"] == behind["went_bad"] == "the loss became nan (batch 6 of 6 in round 1)"
    assert plain["launched"] == behind["launched"] == 6


def test_on_jax_keras_clips_the_global_norm_to_grad_clip(runs):
    """On JAX the optimizer's own `global_clipnorm` clips (TensorFlow's path: test_training.py); 0 clips nothing."""
    assert runs["clipnorm"] == [0.7, None]


def test_tf_gpt2_train_on_jax_stops_at_a_nan_and_keeps_the_last_good_checkpoint(runs):
    assert "loss became nan" in runs["train"]["message"] and "last good checkpoint is" in runs["train"]["message"]
    assert runs["train"]["kept"]



@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler, whatever the tests were started with (a shell's background job ignores SIGINT)."""
    import signal

    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if started_with is not None:  # (None: a handler not set from Python, which cannot be set back from it)
        signal.signal(signal.SIGINT, started_with)


def test_a_ctrl_c_ends_training_at_the_end_of_its_batch_and_a_second_at_once(python_ctrl_c):
    """`tf-gpt2 train` notes a Ctrl-C and raises it at the end of the batch it came in (Keras' conversion of a batch's
    logs, where the host waits on JAX, ignored a KeyboardInterrupt raised there, and a run trained on to its end);
    a second Ctrl-C is Python's own again, one in a round's last call after the round's end (its checkpoint), none in
    the run's last round, one after the last batch as training ends, and the handler before it is back after
    training."""
    import contextlib
    import signal

    import keras
    import numpy as np

    from tf_gpt2.training import OneStepBehind, StopOnInterrupt

    ended = []

    class CtrlC(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:
                signal.raise_signal(signal.SIGINT)  # noted: batch 1 still runs and ends

        def on_train_batch_end(self, batch, logs=None):
            ended.append(batch)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    stop, before = StopOnInterrupt(), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), stop.listening():
        model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=1, epochs=1, verbose=0, callbacks=[CtrlC(), stop])
    assert ended == [0, 1] and stop.interrupted and signal.getsignal(signal.SIGINT) is before
    reached = []
    with pytest.raises(KeyboardInterrupt), StopOnInterrupt().listening():
        signal.raise_signal(signal.SIGINT)  # noted: nothing raised yet
        reached.append(1)
        signal.raise_signal(signal.SIGINT)  # the second: at once
        reached.append(2)
    assert reached == [1] and signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt), StopOnInterrupt().listening():  # after the last batch: as training ends
        model.fit(np.ones((2, 2)), np.ones((2, 1)), batch_size=1, epochs=1, verbose=0,
                  callbacks=[keras.callbacks.LambdaCallback(on_train_end=lambda logs: signal.raise_signal(2))])
    # Ctrl-C once a round's last call is launched: the round's validation and end (its checkpoint) first, then
    # raised; in the run's last round, not raised (the run ends). Run one call behind (OneStepBehind, on JAX), the
    # hooks of a call run after the next is launched: of batch 2 (of 4), or of batch 0 at two batches a call.
    for per_call, behind, at, last_round in ((1, False, 3, None), (1, True, 2, None), (2, True, 0, None),
                                             (2, False, 2, None), (1, True, 2, 0)):
        rounds = []
        ctrl_c = keras.callbacks.LambdaCallback(
            on_train_batch_begin=lambda batch, logs: batch == at and signal.raise_signal(signal.SIGINT),
            on_epoch_end=lambda epoch, logs: rounds.append((epoch, sorted(logs))))
        stop = StopOnInterrupt(last_round=last_round)
        callbacks = [ctrl_c, stop]
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=per_call)
        if behind:
            callbacks = OneStepBehind(callbacks, add_history=True, epochs=3, steps=4, model=model)
        with contextlib.ExitStack() as stack:
            if last_round is None:
                stack.enter_context(pytest.raises(KeyboardInterrupt))
            stack.enter_context(stop.listening())
            model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=2, epochs=1 if last_round == 0 else 3, verbose=0,
                      shuffle=False, validation_data=(np.ones((2, 2)), np.ones((2, 1))), callbacks=callbacks)
        assert rounds == [(0, ["loss", "val_loss"])] and stop.interrupted, (per_call, behind, last_round)
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a process started in the background: left so
    try:
        with StopOnInterrupt().listening():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, ignored)
