"""Training with `model.fit`: AdamW with nanoGPT's decay rule, warmup + cosine schedule, gradient
clipping and accumulation, XLA, mixed precision, LoRA, tf.distribute or keras.distribution (`devices.py`),
and callbacks for
throughput, gradient norm, TensorBoard, atomic checkpoints with exact resume, and a NaN guard.

A run is `steps` optimizer steps split into rounds of `eval_interval` steps (one Keras
"epoch" each). After each round: validation loss/perplexity, a checkpoint, a text sample.
Batch `s` of the data is a pure function of (seed, s), so a run killed at any point and
restarted with the same command resumes from its last checkpoint and ends with the same
weights as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import zipfile
from typing import Any, Callable, Iterator, Sequence

import keras
import ml_dtypes
import numpy as np

from tf_gpt2.checkpoints import COMPUTED, SHAPE, assign_weights, checkpoint_tensors
from tf_gpt2.checks import is_integer
from tf_gpt2.config import DROPOUTS, GPT2Config, with_overrides
from tf_gpt2.data import (
    MANIFEST,
    RUN_RECORD,
    TokenShards,
    char_vocabulary,
    codec,
    data_digest,
    embedded_corpus,
    first_place,
    made_from,
    prepare,
    refuse_another_output,
    resolve_inputs,
    shards_whole,
    texts_changed,
    warn_of_a_folder_of_texts,
)
from tf_gpt2.devices import (
    NO_CHECKPOINT,
    UNREADABLE_CHECKPOINT,
    Placement,
    held_elsewhere,
    host_array,
    place_run,
    process_index,
    refuse_float16_on_a_jax_cpu,
    refuse_other_settings_in_other_processes,
    refuse_other_settings_in_other_workers,
    tensorflow,
)
from tf_gpt2.evaluation import perplexity
from tf_gpt2.files import (
    exclusive,
    json_writer,
    read_json,
    refuse_dangling_link,
    refuse_writing_over_inputs,
    save_keras,
    write_together,
)
from tf_gpt2.generation import pad_id
from tf_gpt2.model import GPT2
from tf_gpt2.progress import round_verbosity
from tf_gpt2.tokenizer import VOCAB_SIZE, check_output_writes
from tf_gpt2.train_config import TrainConfig

CHECKPOINT = "checkpoint.npz"
MODEL_FILE = "model.keras"  # the trained model, as `train` (so `tf-gpt2 train` and `demo`) saves it in the run folder


# -- optimizer ----------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="tf_gpt2")
class PerUpdate(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` counted in optimizer updates when each update accumulates `accumulation` micro-batches
    (Keras' optimizer counts micro-batches in `iterations`)."""

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, accumulation: int):
        self.schedule, self.accumulation = schedule, accumulation

    def __call__(self, iteration):
        return self.schedule(iteration // self.accumulation)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "accumulation": self.accumulation}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["accumulation"])


def learning_rate_schedule(cfg: TrainConfig) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup to `learning_rate`, then cosine decay to `min_learning_rate` at `steps`, all counted
    in optimizer updates (`grad_accum` micro-batches each). Update i of the warmup runs at (i + 1) / (warmup + 1)
    of the peak, as nanoGPT's does (from 0 the first update would change nothing)."""
    warmup = min(cfg.warmup_steps, cfg.steps - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate / (warmup + 1), warmup_target=cfg.learning_rate, warmup_steps=warmup,
        decay_steps=max(cfg.steps - warmup, 1), alpha=cfg.min_learning_rate / cfg.learning_rate,
    )
    return PerUpdate(schedule, cfg.grad_accum) if cfg.grad_accum > 1 else schedule


def make_optimizer(model: GPT2, cfg: TrainConfig) -> keras.optimizers.AdamW:
    """AdamW; weight decay on matrices and embeddings only (nanoGPT's rule: every weight of
    rank >= 2), never on biases, LayerNorm parameters or residual scales."""
    # One clip per backend: on TensorFlow `clip_by_global_norm` (which `train` installs) replaces Keras' clip of
    # each replica's part; elsewhere the gradient is whole (one program over all devices) and Keras' own
    # `global_clipnorm` clips it.
    keras_clips = keras.backend.backend() != "tensorflow"
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(cfg), weight_decay=cfg.weight_decay,
        beta_1=cfg.beta_1, beta_2=cfg.beta_2, global_clipnorm=(cfg.grad_clip or None) if keras_clips else None,
        gradient_accumulation_steps=cfg.grad_accum if cfg.grad_accum > 1 else None,
    )
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    return optimizer


def enable_lora(model: GPT2, rank: int) -> None:
    """LoRA on every projection (Keras' built-in `Dense.enable_lora`); every other weight frozen."""
    if not is_integer(rank) or not 1 <= rank <= model.config.n_embd:  # (0 froze the model and trained nothing)
        raise ValueError(f"the LoRA rank must be an integer in [1, {model.config.n_embd}] (n_embd: no projection has "
                         f"a higher rank), got {rank!r}")
    adapters = set()
    for block in model.h:
        for dense in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            dense.enable_lora(rank)
            adapters |= {id(dense.lora_kernel_a), id(dense.lora_kernel_b)}
    for variable in model.trainable_variables:  # adapters only, as in LoRA's paper: biases, LayerNorms, embeddings
        if id(variable) not in adapters and not variable.overwrite_with_gradient:
            variable.trainable = False  # (a variant's residual scales too; float8's scales are no weights: they go on)


def inference_model(model: GPT2) -> GPT2:
    """The trained weights in a fresh, uncompiled GPT2 of the same policy: LoRA adapters merged into their kernels
    (in the dtype the weights are kept in), no optimizer state (a third of a trained model's `.keras` size), no
    training-only setting (`remat`, `loss_chunk`). Resuming uses the checkpoint."""
    fresh = GPT2(model.config.without_training_settings(), dtype=model.dtype_policy.name)
    return assign_weights(fresh, checkpoint_tensors(model), "the trained model")


# -- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(model: GPT2, path: str, step: int, write: bool = True,
                    beside: dict[str, Callable[[str], object]] | None = None) -> None:
    """Model + optimizer state (incl. RNG state) in one file, written atomically, together with the files `beside`
    (`write_together`: renamed first). Every process of a run calls it (the shards of a split weight are gathered
    from all of them first); the one with `write` writes, a variable at a time: a copy of the whole state in host
    memory (5.9 GB more for GPT-2 medium's weights, AdamW moments and accumulated gradients) took a CPU run past its
    memory."""
    variables = list(model.variables) + list(model.optimizer.variables)
    gathered = {i: host_array(v) for i, v in enumerate(variables) if held_elsewhere(v)}  # (collectives: all of them)
    if not write:
        return
    meta = {"step": step, "variables": [v.path for v in variables], "grad_accum": _accumulating(model.optimizer)[1],
            "characters": model.config.characters}

    def dump(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w") as z:  # np.savez's file: a zip of .npy files, stored

            def put(name: str, array: np.ndarray) -> None:
                with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, array, allow_pickle=False)

            put("meta", np.array(json.dumps(meta)))
            for i, variable in enumerate(variables):
                put(f"v{i}", gathered.pop(i) if i in gathered else host_array(variable))

    write_together({**(beside or {}), path: dump})


def checkpoint_step(path: str) -> int | None:
    """The step of the checkpoint at `path`; None where there is none, or it cannot be read (`train` says why)."""
    try:
        with np.load(path) as f:
            return int(json.loads(str(f["meta"]))["step"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None


def _checkpoint_found(path: str) -> int:
    """The step of the checkpoint at `path`, or NO_CHECKPOINT, or UNREADABLE_CHECKPOINT (`train` says why)."""
    if not os.path.exists(path):
        return NO_CHECKPOINT
    step = checkpoint_step(path)
    return UNREADABLE_CHECKPOINT if step is None else step


def restore_checkpoint(model: GPT2, path: str) -> int:
    """Load a checkpoint written by `save_checkpoint` into a compiled model; returns its step."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    variables = list(model.variables) + list(model.optimizer.variables)
    try:
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            arrays = [f[f"v{i}"] for i in range(len(meta["variables"]))]
    except Exception as e:  # truncated, empty or damaged: BadZipFile, EOFError, zlib.error, KeyError, ...
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); nothing was changed: "
                         "restore a copy, or move it away to start the run over") from None
    if meta.get("characters", model.config.characters) != model.config.characters:  # (older checkpoints: none)
        said = [repr("".join(chars)[:60]) if chars else "GPT-2's BPE" for chars in (meta["characters"],
                                                                                   model.config.characters)]
        raise ValueError(f"checkpoint {path} was trained on other tokens than this run's data holds ({said[0]} "
                         f"against {said[1]}): every id would mean another character")
    seeds = [sum("seed_generator" in name for name in names) for names in (meta["variables"],
                                                                            [v.path for v in variables])]
    if seeds[0] != seeds[1] and len(arrays) - seeds[0] == len(variables) - seeds[1]:
        raise ValueError(f"checkpoint {path} holds the random state of {seeds[0]} dropout layer(s), this run's "
                         f"model has {seeds[1]}: a dropout layer has one only at a rate above 0, so no resume turns a "
                         "dropout (--dropout, --attn-pdrop, or --init-from's config's) on or off; resume with the "
                         "rates the run had (0.1 to 0.2 resumes), or start a new --out")
    if len(arrays) != len(variables):  # names carry per-process counters, so compare structure
        raise ValueError(f"checkpoint {path} holds {len(arrays)} variables, this model and optimizer "
                         f"have {len(variables)}: it was written by a different configuration (another model size, "
                         "--lora-rank, float16's loss scale, or --grad-accum: only a run that accumulates has "
                         "accumulators, so a run of --grad-accum 1 and one of more do not resume each other)")
    for variable, value in zip(variables, arrays):
        if tuple(value.shape) != tuple(variable.shape):
            what = ("adapters of another --lora-rank" if "lora" in variable.path else "a model of another size")
            raise ValueError(f"checkpoint {path}: '{variable.path}' has shape {value.shape}, this run's "
                             f"{variable.shape}: it holds {what}, which no resume takes (the model's "
                             "flags as the run had them, or another --out)")
        if value.dtype == np.dtype("V2"):  # np.savez keeps bfloat16 as raw bytes (a float32 variable takes them too)
            value = value.view(ml_dtypes.bfloat16)
        try:
            variable.assign(value)
        except Exception as e:  # whatever the backend raises: the file and the variable are named
            raise ValueError(f"checkpoint {path}: '{variable.path}' ({variable.dtype}) cannot take its {value.dtype} "
                             f"values: {e}") from None
    optimizer, now = _accumulating(model.optimizer)
    before = meta.get("grad_accum", now)  # (a checkpoint written before it was recorded: taken as unchanged)
    if before != now:  # Keras counts micro-batches: resumed with another grad_accum, the run goes on from its updates
        updates, within = divmod(int(optimizer._iterations), before)
        if within:  # a float16 step skipped for an overflow leaves the count, and the sums, mid-accumulation
            raise ValueError(f"checkpoint {path} lies within an accumulation ({within} of {before} micro-batches): "
                             f"it resumes only with --grad-accum {before}")
        optimizer._iterations.assign(updates * now)
    return int(meta["step"])


def _accumulating(optimizer: keras.optimizers.Optimizer) -> tuple[keras.optimizers.Optimizer, int]:
    """The optimizer that counts (the one inside a LossScaleOptimizer) and the micro-batches of each update."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return inner, inner.gradient_accumulation_steps or 1


# -- callbacks ----------------------------------------------------------------------------------
class OneStepBehind(keras.callbacks.CallbackList):
    """Callbacks that see each training batch one batch late, so that the accelerator always has one queued.

    Keras hands a batch's logs to the callbacks as soon as it has launched the batch; reading them (the NaN guard,
    the progress bar, TensorBoard all do) makes the host wait for the accelerator to finish it, and the accelerator
    idles while the host then fetches and launches the next. Held back one batch, the callbacks read a batch that
    has finished while the next one runs. Each batch still reaches them whole (its begin, then its end) and in
    order; the last one before the round's validation and end, so checkpoints see every batch.

    What that changes for a callback: a batch hook that reads the model's weights or optimizer sees them one step
    on (the next batch has run), and `model.stop_training` set there stops training one batch later. `tf-gpt2
    train`'s own callbacks read only the logs in their batch hooks, and the rest at the round's end. Used on JAX,
    where a launched step runs on while Python goes on (`fit_callbacks`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._begun, self._held = None, None
        for callback in self.callbacks:
            if isinstance(callback, StopOnInterrupt):
                callback.calls_behind = 1

    def on_train_batch_begin(self, batch, logs=None):
        self._begun = batch

    def on_train_batch_end(self, batch, logs=None):
        self._release()
        self._held = (self._begun, batch, logs)

    def _release(self):
        if self._held is not None:
            begun, batch, logs = self._held
            self._held = None
            super().on_train_batch_begin(begun)
            super().on_train_batch_end(batch, logs)

    def on_test_begin(self, logs=None):  # a round's validation comes after its last batch
        self._release()
        super().on_test_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._release()
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        self._release()
        super().on_train_end(logs)


def fit_callbacks(callbacks: list, model: keras.Model, *, epochs: int, steps: int, verbose: int):
    """What `model.fit` takes as `callbacks`: on JAX, `callbacks` one batch behind (`OneStepBehind`) with the
    history and (unless `callbacks` hold one) the progress bar fit would add; on other backends the list itself."""
    if keras.backend.backend() != "jax":
        return callbacks
    return OneStepBehind(callbacks, add_history=True, add_progbar=verbose != 0, verbose=verbose, epochs=epochs,
                         steps=steps, model=model)


class RunProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, its "Epoch N/M" counting the run's `rounds`: a run's rounds of unequal length are fit
    one `fit` per length, and each fit's own count said "Epoch 1/7" ... "7/7", then "Epoch 8/8"."""

    async_safe = True  # as Keras takes its own bar: on JAX the validation batches' callbacks still run off-thread

    def __init__(self, rounds: int):
        super().__init__()
        self.rounds = rounds

    def set_params(self, params):  # (a bar only where it can be redrawn: else a line per round)
        super().set_params({**params, "epochs": self.rounds, "verbose": round_verbosity(params["verbose"])})


class RunTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard whose batch-level points stand at the micro-batches trained since the run's start when
    their compiled call ended, not at the count of calls since each `fit` call's start: a resumed run (under another
    --steps-per-execution too), and each `fit` of one run, continue the curves instead of drawing over them.
    `first_batch` is the number of micro-batches trained before this `fit`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.first_batch = self._round_start = self._rounds_begun = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._global_train_batch, self._rounds_begun = self.first_batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._round_start = self.first_batch + self._rounds_begun * self.params["steps"]  # (steps: micro-batches)
        self._rounds_begun += 1

    def on_train_batch_end(self, batch, logs=None):
        self._global_train_batch = self._round_start + batch + 1  # (batch: the call's last micro-batch in its round)
        super().on_train_batch_end(batch, logs)


class Throughput(keras.callbacks.Callback):
    """Adds `tok/s` (training tokens per second) to the logs the progress bar shows: each batch's, and the round's
    (its line, where output goes to a file, and its point in TensorBoard), counted from the end of its first
    compiled call, so that neither XLA's compile nor the data's start is in it (a round of one call: that call's)."""

    def __init__(self, tokens_per_step: int):
        super().__init__()
        self.tokens_per_step = tokens_per_step

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.last_batch, self.first, self.rest = time.perf_counter(), -1, None, (0, 0.0)

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        tokens, seconds = (batch - self.last_batch) * self.tokens_per_step, max(now - self.start, 1e-9)
        if self.first is None:
            self.first = (tokens, seconds)
        else:
            self.rest = (self.rest[0] + tokens, self.rest[1] + seconds)
        if logs is not None:
            logs["tok/s"] = tokens / seconds
        self.start, self.last_batch = now, batch

    def on_epoch_end(self, epoch, logs=None):
        tokens, seconds = self.rest if self.rest[0] else self.first or (0, 0.0)
        if logs is not None and tokens:
            logs["tok/s"] = tokens / seconds


def clip_by_global_norm(optimizer: keras.optimizers.Optimizer, clip_norm: float | None):
    """Make `optimizer` clip each update's gradient by its global norm, measured on the gradient summed over
    replicas (after accumulation), and return the variable that records that norm before clipping.

    Keras clips inside `_clip_gradients`, on each replica's partial gradient (before the sum in
    `_backend_update_step`), so a multi-replica sum could exceed the clip norm; it has no public hook
    that runs after accumulation and across replicas, so this replaces that one method.
    """
    import tensorflow as tf

    norm = tf.Variable(0.0, trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def measure_then_clip(grads):
        context = tf.distribute.get_replica_context()
        replicas = 1 if context is None else context.num_replicas_in_sync
        if replicas > 1:  # summed over replicas, dense: a sparse gradient's all-reduce concatenates, never adds
            total = tf.linalg.global_norm(context.all_reduce("SUM", [tf.convert_to_tensor(g) for g in grads]))
        else:
            total = tf.linalg.global_norm(grads)
        norm.assign(tf.cast(total, tf.float32))
        if not clip_norm:
            return grads
        scale = clip_norm / tf.maximum(total, clip_norm)  # the factor tf.clip_by_global_norm applies
        return [g * tf.cast(scale, g.dtype) for g in grads]

    optimizer._clip_gradients = measure_then_clip
    return norm


class LogGradientNorm(keras.callbacks.Callback):
    """Adds `grad_norm` (the global norm of the last update's gradient, before clipping) to the logs."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs["grad_norm"] = float(self.norm.numpy())

    on_epoch_end = on_train_batch_end


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, or at the end of a round that went bad after its last update
    (`round_went_bad`), and says which in `went_bad` (the first, if more follow)."""

    def __init__(self):
        super().__init__()
        self.went_bad, self._round, self._first = None, 0, 0

    def _stop(self, what: str) -> None:
        if self.went_bad is None:
            self.went_bad = what
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._round = epoch + 1

    def on_train_batch_begin(self, batch, logs=None):
        self._first = batch  # (a compiled call of --steps-per-execution N runs N, and gives their last loss)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):  # (batch: from 0, among the round's micro-batches)
            which = f"batch {batch + 1}" if batch == self._first else f"batches {self._first + 1}-{batch + 1}"
            self._stop(f"the loss became {float(loss)} ({which} of {self.params.get('steps')} in round {self._round})")

    def on_epoch_end(self, epoch, logs=None):
        if round_went_bad(logs, self.model):
            val_loss = (logs or {}).get("val_loss")
            self._stop(f"the validation loss became {float(val_loss)} after the round's last update"
                       if val_loss is not None else "the weights stopped being finite in the round's last update")


class StopOnInterrupt(keras.callbacks.Callback):
    """Ctrl-C (SIGINT) ends training at the end of the compiled call it came in; once a round's last call is
    launched, after the round's end (its validation and checkpoint); in the run's `last_round`, not at all (the run
    ends, and saves its model). A KeyboardInterrupt raised here, and by `listening()` where it came after the last.

    Raised where the signal lands, it could be lost: on JAX the host waits for each batch in Keras' conversion of its
    logs, which ignores whatever is raised there (a bare `except`), and a run trained on to its end. Within
    `listening()` a first Ctrl-C is noted and said, and a second is Python's own again. An ignored SIGINT (a
    process started in the background) stays ignored, and so does Ctrl-C where `listen` is False. Put it after the
    callbacks that end a round (`SaveCheckpoint`): they run before it raises.
    """

    calls_behind = 0  # how many compiled calls after the one launched its batch hooks run (`OneStepBehind`'s: 1)

    def __init__(self, listen: bool = True, last_round: int | None = None):
        super().__init__()
        self.listen, self.last_round = listen, last_round
        self.interrupted = self.ended = False

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        previous = signal.getsignal(signal.SIGINT)
        if (not self.listen or threading.current_thread() is not threading.main_thread()
                or previous in (None, signal.SIG_IGN)):
            yield
            return

        def note(signum, frame):
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C is Python's own
            self.interrupted = True
            os.write(2, b"\ninterrupted: training stops at the end of this step, or of this round's checkpoint "
                        b"(Ctrl-C again to stop sooner)\n")

        signal.signal(signal.SIGINT, note)
        try:
            yield
            self._stop()  # one that came after the last call
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop(self) -> None:
        if self.interrupted and not self.ended:
            raise KeyboardInterrupt

    def on_train_batch_end(self, batch, logs=None):
        steps = (self.params or {}).get("steps")
        launched = batch + self.calls_behind * (getattr(self.model, "steps_per_execution", None) or 1)
        if steps is None or launched + 1 < steps:  # (once a round's last call is launched, its end comes first)
            self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self.ended = epoch == self.last_round
        self._stop()


class RoundMetrics(keras.callbacks.Callback):
    """After each round: validation perplexity and the learning rate into the logs (progress bar, TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if "val_loss" in logs:
            logs["val_perplexity"] = perplexity(float(logs["val_loss"]))
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def step_callbacks(tokens_per_batch: int, nan_guard: StopOnNaN | None = None) -> list[keras.callbacks.Callback]:
    """The callbacks `tf-gpt2 train` runs at every batch: tokens/s, the NaN guard, the round's metrics (and, in a
    run of one process, `StopOnInterrupt`)."""
    return [Throughput(tokens_per_batch), nan_guard or StopOnNaN(), RoundMetrics()]


def round_went_bad(logs: dict | None, model: keras.Model) -> bool:
    """A round's loss or validation loss is not finite: a step of it went bad (a round's loss is the mean of its
    steps'), or its last update did (only the validation after it sees that; in a run without validation, the
    weights themselves)."""
    logs = logs or {}
    if not all(math.isfinite(float(logs.get(name, 0.0))) for name in ("loss", "val_loss")):
        return True
    if "val_loss" in logs:
        return False
    finite = [keras.ops.all(keras.ops.isfinite(v)) for v in model.trainable_weights]
    return not bool(keras.ops.all(keras.ops.stack(finite)))  # (one wait for the device, not one per weight)


class SaveCheckpoint(keras.callbacks.Callback):
    """After each round: model + optimizer state to `path`, atomically, with the files `beside` (run.json: the
    settings the checkpoint was trained under), unless the round went bad (`round_went_bad`)."""

    def __init__(self, path: str, round_end: Callable[[int], int], write: bool = True,
                 beside: dict[str, Callable[[str], object]] | None = None):
        super().__init__()
        self.path, self.round_end, self.write, self.beside = path, round_end, write, beside

    def on_epoch_end(self, epoch, logs=None):
        if not round_went_bad(logs, self.model):
            save_checkpoint(self.model, self.path, self.round_end(epoch), self.write, self.beside)


class TextSample(keras.callbacks.Callback):
    """After each round: a greedy continuation of `prompt` to the console and to TensorBoard (`log_dir`), of `tokens`
    tokens or as many as the model's context holds after one prompt token (the prompt keeps its last tokens; none in
    a context of one), in ids below `vocab_end` (those `decode` reads: a model padded past its data's vocabulary
    chooses no padding row).
    An empty prompt starts from `<|endoftext|>` (id 0 in a vocabulary without it), which the sample does not show.
    None after a round that went bad (`round_went_bad`): the NaN guard stops the run and says so."""

    def __init__(self, prompt_ids: list[int], tokens: int, decode, round_end: Callable[[int], int],
                 log_dir: str | None = None, verbose: int = 1, vocab_end: int | None = None):
        super().__init__()
        self.prompt_ids, self.tokens, self.decode = prompt_ids, tokens, decode
        self.round_end, self.verbose, self.vocab_end = round_end, verbose, vocab_end
        self.writer, self.noted = None, False
        if log_dir:
            tf = tensorflow()

            self.writer = tf.summary.create_file_writer(log_dir)

    def _window(self) -> tuple[list[int], int]:
        """The prompt ids the context holds beside the new tokens (its last ones), and how many new tokens."""
        context = self.model.config.n_positions
        tokens = min(self.tokens, context - 1)
        return self.prompt_ids[-(context - tokens):], tokens

    def on_train_begin(self, logs=None):  # (once per `fit`: a run may call it for each group of rounds)
        if self.noted:
            return
        self.noted = True
        (ids, tokens), context = self._window(), self.model.config.n_positions
        if not tokens:  # (a sample of no tokens failed after the first round)
            print(f"note: no samples: the context of {context} holds no token after one prompt token",
                  file=sys.stderr)
        elif tokens < self.tokens:
            print(f"note: the samples are {tokens} tokens long, not {self.tokens}: the context of {context} holds "
                  "that many after one prompt token", file=sys.stderr)
        if tokens and len(ids) < len(self.prompt_ids):
            print(f"note: the samples continue the last {len(ids)} of the sample prompt's {len(self.prompt_ids)} "
                  f"tokens: the context of {context} holds them and {tokens} new ones", file=sys.stderr)

    def on_epoch_end(self, epoch, logs=None):
        if round_went_bad(logs, self.model):
            return  # the NaN guard reports it (and NaN weights give no logits to choose from)
        step = self.round_end(epoch)
        ids, tokens = self._window()
        if not tokens:
            return
        start = ids or [pad_id(self.model.config)]  # as GPT-2's own unconditional samples start
        text = self.decode(ids + self.model.generate(start, max_new_tokens=tokens, stop_ids=[],
                                                     vocab_end=self.vocab_end))
        if self.verbose:  # (after the line break that ends a bar's open line, where a bar is drawn)
            print("\n" * (round_verbosity(self.verbose) == 1) + f"--- sample at step {step} ---\n{text}\n---")
        if self.writer is not None:
            import tensorflow as tf

            with self.writer.as_default():
                tf.summary.text("sample", text, step=step)


# -- the run ------------------------------------------------------------------------------------
def _is_prepared(data: str | None) -> bool:
    """Whether `data` is a folder of token shards (`tf-gpt2 prepare`'s), not raw text: another program's
    manifest.json (JSON without splits) in a folder of texts does not make one; a damaged one is read, and named."""
    path = os.path.join(data, MANIFEST) if data else ""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError, RecursionError):
        return True
    return isinstance(manifest, dict) and "splits" in manifest


def refuse_other_vocab(data: str | None, vocab: str) -> None:
    """Refuse a `vocab` asked for over prepared shards of another one (it tokenizes raw text only)."""
    if _is_prepared(data) and (prepared := read_json(os.path.join(data, MANIFEST)).get("vocab")) != vocab:
        raise ValueError(f"--vocab {vocab} tokenizes raw text, and {data} holds shards already tokenized with --vocab "
                         f"{prepared}: leave --vocab out, or give the raw text as --data")


def _raw_texts(cfg: TrainConfig) -> list[str]:
    """The text files a run of raw text reads (not its own data folder, nor anything else in its --out)."""
    return resolve_inputs(cfg.data or embedded_corpus(), exclude=[os.path.join(cfg.out, "data"), cfg.out])


def _data_before_tokenizing(cfg: TrainConfig, files: Sequence[str] | None) -> dict[str, Any]:
    """What a resume can tell of its data before any text is tokenized: a prepared dataset's digest, or whether the
    raw `files` differ from the texts the run's own dataset was made from (so that a refusal names a data change
    beside the settings changed)."""
    if files is None:
        with open(os.path.join(cfg.data, MANIFEST), "rb") as f:
            return {"data_sha256": data_digest(f.read())}
    manifest = os.path.join(cfg.out, "data", MANIFEST)
    made = read_json(manifest) if os.path.exists(manifest) else None
    vocab = made and made.get("vocab")  # (the texts in the dataset's own vocabulary: --vocab is a setting of its own)
    said = "" if made is None or made_from(made, files, vocab) else texts_changed(made, files, vocab)
    return {"texts_changed": said} if said else {}


def prepared_data(cfg: TrainConfig, characters: Sequence[str] | None = None,
                  files: Sequence[str] | None = None) -> str:
    """The directory of token shards for this run, tokenizing raw text first if needed (`files`, where the caller
    has them): with `--vocab char`, in `characters` (the model's of `--init-from`) when the text has no other, so
    that its ids mean them."""
    if _is_prepared(cfg.data):
        if cfg.vocab != TrainConfig.vocab:  # (the default cannot tell asked from not; the CLI can)
            refuse_other_vocab(cfg.data, cfg.vocab)
        return cfg.data
    directory = os.path.join(cfg.out, "data")
    manifest = os.path.join(directory, MANIFEST)
    files = _raw_texts(cfg) if files is None else files
    characters = characters if cfg.vocab == "char" else None
    made = read_json(manifest) if os.path.exists(manifest) else None
    checkpointed = made is not None and os.path.exists(os.path.join(cfg.out, CHECKPOINT))
    runs_own = characters is None and cfg.vocab == "char" and checkpointed and made.get("vocab") == "char"
    if runs_own:  # a resumed character model reads edited text in its own table, so that each id keeps its meaning
        characters = made["chars"]
    other_table = characters is not None and made is not None and made.get("chars") != list(characters)
    if made is None or other_table or not made_from(made, files, cfg.vocab) or not shards_whole(directory, made):
        # other or edited text, or its tokens lost, or read in other characters: made again, but not over the tokens
        # of a run's checkpoint from other text
        if checkpointed and not cfg.resume_with_changes and (said := texts_changed(made, files, cfg.vocab)):
            raise ValueError(f"{cfg.out} holds a checkpoint of a run on other text: the texts of --data changed since "
                             f"its dataset ({directory}) was made ({said}; their order makes the validation split). "
                             "Use another --out for a new run, or --resume-with-changes to continue this one on the "
                             "texts as they are now")
        unknown = set(char_vocabulary(files)) - set(characters) if characters is not None else set()
        if unknown and runs_own:
            raise ValueError(f"the texts of --data now hold characters the run's model in {cfg.out} has no id for: "
                             f"{', '.join(map(repr, sorted(unknown)[:20]))} (the first: "
                             f"{first_place(files, unknown)}); its dataset ({directory}) is as it was. A character "
                             "model reads only its own characters: use another --out for a new run")
        if unknown:
            characters = None  # text of other characters: in its own, which `matched_to_data` refuses by name
        prepare(files, directory, vocab=cfg.vocab, verbose=bool(cfg.verbose), characters=characters)
    return directory


SHAPE_FIELDS = tuple(f for f in SHAPE if f != "vocab_size")  # what --init-from fixes; dropout and padding it does not


def pretrained(cfg: TrainConfig) -> GPT2:
    """The model `cfg.init_from` names, checked against the run's model flags, before any text is tokenized (read
    outside any distribution: its weights are copied into the run's model)."""
    model = GPT2.from_pretrained(cfg.init_from)
    config, name = model.config, cfg.init_from
    if model.quantization:
        raise ValueError(f"--init-from {name} is quantized ({model.quantization}): train from its float weights")
    fixed = [(f"--{k.replace('_', '-')} {v}" if k in SHAPE_FIELDS else f"{k}={v!r}") + f" (it has {getattr(config, k)})"
             for k, v in cfg.model.items() if k in SHAPE_FIELDS + COMPUTED and getattr(config, k) != v]
    if fixed:
        raise ValueError(f"--init-from {name} fixes the model's shape and what its weights compute: "
                         f"{', '.join(fixed)} cannot apply")
    if not _is_prepared(cfg.data):  # (before the text is tokenized)
        _refuse_other_tokens(cfg, config, cfg.vocab, "and the text would be tokenized")
    return model


def _refuse_other_tokens(cfg: TrainConfig, config: GPT2Config, vocab: str, tokenized: str) -> None:
    """Refuse a model of `cfg.init_from` that reads other tokens than `vocab` makes: GPT-2 BPE (a model of ids
    alone, narrower than GPT-2's vocabulary, may take a dataset's characters) or characters (a model of them)."""
    bpe = config.characters is None
    if not (bpe and config.vocab_size >= VOCAB_SIZE and vocab == "char" or not bpe and vocab != "char"):
        return
    own = "gpt2" if bpe else "char"
    fix = (f"give the raw text as --data, or shards prepared with --vocab {own}" if _is_prepared(cfg.data)
           else f"pass --vocab {own}")  # (--vocab does not apply to shards)
    raise ValueError(f"--init-from {cfg.init_from} reads {'GPT-2 BPE' if bpe else 'characters'}, {tokenized} "
                     f"{'as characters' if bpe else 'as GPT-2 BPE'}: {fix}")


def matched_to_data(cfg: TrainConfig, model: GPT2, manifest: dict) -> GPT2:
    """`model` (`pretrained`) checked against the run's data: its vocabulary must read the data's ids; a model of
    ids alone takes the data's characters."""
    config, name = model.config, cfg.init_from
    chars = manifest.get("chars")
    _refuse_other_tokens(cfg, config, "gpt2" if chars is None else "char", "the data was tokenized")
    if config.characters is not None and config.characters != chars:  # (before the sizes: the characters named)
        only_data = "".join(c for c in chars if c not in config.characters)
        only_model = "".join(c for c in config.characters if c not in chars)
        if not only_data:  # prepared shards: their ids number the text's own characters
            raise ValueError(f"--init-from {name} reads all of the data's characters, but {cfg.data} numbers them "
                             f"by its own table of {len(chars)}: give the raw text as --data (with --vocab char), "
                             "which is then read in the model's characters")
        sources = [path for path in manifest.get("sources", []) if os.path.isfile(path)]
        first = first_place(sources, only_data)
        raise ValueError(f"--init-from {name} reads other characters than the data (only in the data: {only_data!r}"
                         f"{', the first: ' + first if first else ''}, only in the model: {only_model!r}): its ids "
                         "would mean other characters; train a new model on this text instead")
    if config.vocab_size < manifest["vocab_size"]:
        raise ValueError(f"--init-from {name} has {config.vocab_size} tokens, the data needs {manifest['vocab_size']}")
    if config.characters is None and chars is not None and len(chars) != config.vocab_size:
        raise ValueError(f"--init-from {name} is a model of {config.vocab_size} ids without characters, and the data "
                         f"has {len(chars)} characters: the trained model could not read or write text (its ids take "
                         "a dataset's characters only when the counts match); train a new model on this text instead")
    if config.characters is None and chars is not None:
        model.config.characters = chars  # a model of ids alone learns what they mean: the data's characters
    return model


def model_config(cfg: TrainConfig, manifest: dict | None, source: GPT2 | None = None) -> GPT2Config:
    """The config of the model a run trains, checked with its block size (`manifest` None: before the text is
    tokenized, GPT-2's vocabulary standing in for the data's, so that a bad model flag is said at once)."""
    if source is not None:  # its shape and arithmetic; how a step is computed is this run's own
        config = dataclasses.replace(source.config.without_training_settings(), **with_overrides({}, cfg.model))
    else:
        data = {"vocab_size": manifest["vocab_size"], "characters": manifest.get("chars")} if manifest else {}
        config = GPT2Config.from_preset(cfg.preset, **{"vocab_size": VOCAB_SIZE, **data, **cfg.model})
    if cfg.block_size > config.n_positions:
        raise ValueError(f"block_size {cfg.block_size} exceeds the model's context of {config.n_positions}: use a "
                         f"block_size (--block-size) of at most {config.n_positions}")
    if cfg.lora_rank > config.n_embd:  # (refused by enable_lora, after the text was tokenized)
        raise ValueError(f"lora_rank {cfg.lora_rank} (--lora-rank) exceeds the model's width of {config.n_embd} "
                         "(n_embd): no projection has a higher rank")
    return config


def build_model(cfg: TrainConfig, manifest: dict, placement: Placement | None = None,
                source: GPT2 | None = None) -> GPT2:
    """The model a run trains: new from the preset, sized for the data's vocabulary, or the weights of `source`
    (`pretrained`) under the run's model flags."""
    config = model_config(cfg, manifest, source)
    if placement:
        placement.check(config)
    if source is None and cfg.block_size < config.n_positions:  # (said on every run, as the val split's note)
        print(f"note: block_size {cfg.block_size} trains positions 0-{cfg.block_size - 1} of the model's "
              f"{config.n_positions}: text past {cfg.block_size} tokens (generate, eval's default context) meets "
              f"position embeddings never trained; --n-positions {cfg.block_size} makes the model that long",
              file=sys.stderr)
    model = GPT2(config, dtype=cfg.base_dtype or cfg.precision)  # a 16-bit base: its adapters are float32 still
    if source is not None:
        copy_weights(source, model)
    if cfg.lora_rank:
        enable_lora(model, cfg.lora_rank)
    return model


def copy_weights(source: GPT2, model: GPT2) -> None:
    """`source`'s weights into `model`, a GPT2 of the same shape but for padding rows of the token embedding
    (those keep their initial values)."""
    for variable, value in zip(model.weights, source.get_weights(), strict=True):
        if value.shape != tuple(variable.shape):  # the token embedding, padded to another vocab_multiple
            rows = source.config.vocab_size
            value = np.concatenate([value[:rows], host_array(variable)[rows:]])
        variable.assign(value)


# Settings that do not change what a run computes: they may differ when it resumes.
PRESENTATION_FIELDS = ("out", "verbose", "tensorboard", "sample_prompt", "sample_tokens", "eval_batches",
                       "jit_compile", "steps_per_execution", "strategy", "resume_with_changes", "distribution", "mesh",
                       "coordinator", "num_processes", "process_id")
# Settings that may differ between the processes of one run (keras.distribution on JAX, tf.distribute's workers)
PER_PROCESS_FIELDS = ("out", "verbose", "tensorboard", "process_id", "coordinator", "num_processes")


def run_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that make a run this run (those in PRESENTATION_FIELDS may change when it resumes)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in PRESENTATION_FIELDS}


def run_identity(cfg: TrainConfig, data_dir: str) -> dict[str, Any]:
    """What makes a run this run: its settings, the dataset (`data_digest`) and Keras' backend (whose dropout draws
    differ: a run resumed on the other is not the run it was)."""
    with open(os.path.join(data_dir, MANIFEST), "rb") as f:
        manifest = f.read()
    return {"settings": run_settings(cfg), "data_sha256": data_digest(manifest), "backend": keras.backend.backend(),
            "data_path": os.path.realpath(cfg.data) if cfg.data else None}


def _same_setting(name: str, before: Any, now: Any, record: dict[str, Any]) -> bool:
    """Whether a setting is unchanged; `--data dp`, `./dp/` and its absolute path are one place (the record's
    `data_path`, where it has one: the place the run started from, whatever folder it was started in), as are
    `--init-from hf1` and `hf1/` where that folder is there (a name on the Hub is a name)."""
    if name == "data" and record.get("data_path") and isinstance(now, str):  # "a.txt" started elsewhere is another
        return record["data_path"] == os.path.realpath(now)
    if before == now:
        return True
    paths = isinstance(before, str) and isinstance(now, str) and (
        name == "data" or (name == "init_from" and os.path.exists(now)))
    return paths and os.path.realpath(before) == os.path.realpath(now)


UNREADABLE_RECORD = (OSError, ValueError, KeyError, TypeError, AttributeError)  # (not JSON, not UTF-8: ValueErrors)


def _read_record(out: str) -> dict[str, Any]:
    """The run.json in `out`; one of UNREADABLE_RECORD where it is missing, unreadable or holds no settings."""
    with open(os.path.join(out, RUN_RECORD), encoding="utf-8") as f:
        record = json.load(f)
    record["settings"].items()
    return record


def check_resume(cfg: TrainConfig, identity: dict[str, Any]) -> list[str]:
    """Refuse to resume a run under settings or data other than those it was started with (the data only where
    `identity` has its digest: the settings are checked again before the text is tokenized), or one whose run.json
    is missing or unreadable, unless `resume_with_changes`, or one that has nothing left to train (its changes would
    be taken by nothing). Returns the changes it takes."""
    path = os.path.join(cfg.out, RUN_RECORD)
    try:
        before = _read_record(cfg.out)
    except UNREADABLE_RECORD as e:
        if cfg.resume_with_changes:
            return []
        said = "is missing" if isinstance(e, FileNotFoundError) else f"is unreadable ({e!r})"
        raise ValueError(f"{path} {said}: cannot tell which run the checkpoint beside it belongs to. Use another "
                         "--out for a new run, or --resume-with-changes to continue this one anyway") from None

    changed = _changes(cfg, before, identity)
    if changed and not cfg.resume_with_changes:
        raise ValueError(f"{cfg.out} holds a checkpoint of a run with other settings ({'; '.join(changed)}). "
                         "Use another --out for a new run, or --resume-with-changes to continue this one anyway")
    if cannot := _unresumable(cfg, before["settings"]):
        raise ValueError(f"{cfg.out} holds a checkpoint that this run cannot continue, even with "
                         f"--resume-with-changes: {cannot}. Use another --out for a new run")
    checkpoint = os.path.join(cfg.out, CHECKPOINT)
    if changed and (step := checkpoint_step(checkpoint) or 0) >= cfg.steps:
        # (taken, they left run.json as it was, and the run's data tokenized from the changed texts)
        raise ValueError(f"{checkpoint} is at step {step}, and --steps is {cfg.steps}: nothing is left to train, so "
                         f"the changes ({'; '.join(changed)}) would not be taken: give a --steps past {step} to train "
                         "on with them")
    return changed


def _loss_scaled(settings: dict[str, Any]) -> bool:
    """Whether a run of these settings computes in float16, with its loss scale."""
    return settings.get("precision") == "mixed_float16" or settings.get("base_dtype") == "float16"


def _unresumable(cfg: TrainConfig, before: dict[str, Any]) -> str | None:
    """The change from a checkpoint's settings (`before`) that no resume can take, said, or None: float16's loss
    scale (optimizer state, kept in the checkpoint) gained or lost, raw text tokenized with another vocabulary than
    the checkpoint's model reads, another LoRA rank, accumulation gained or lost, another model size or dropout
    turned on or off (said before the text is tokenized again, and the run's dataset replaced)."""
    settings = run_settings(cfg)
    if _loss_scaled(before) != _loss_scaled(settings):
        was = "with" if _loss_scaled(before) else "without"
        return (f"it was trained {was} float16's loss scale (--precision mixed_float16, or --base-dtype float16), "
                f"which the optimizer keeps: resume it {was} one")
    if before.get("vocab", cfg.vocab) != cfg.vocab and not _is_prepared(cfg.data):
        return (f"its model reads --vocab {before['vocab']} tokens, and this run would tokenize --data with "
                f"--vocab {cfg.vocab}: resume it with --vocab {before['vocab']}")
    # What the checkpoint's variables fix (`restore_checkpoint` checks them; these are said from the settings, before
    # the run's raw text is tokenized again over its dataset)
    rank, accumulated = before.get("lora_rank", cfg.lora_rank), before.get("grad_accum", cfg.grad_accum)
    if is_integer(rank) and rank != cfg.lora_rank:  # (a record's own values: another program's are not compared)
        return f"it holds {f'adapters of --lora-rank {rank}' if rank else 'no LoRA adapters'}: resume it with " \
               f"--lora-rank {rank}"
    if is_integer(accumulated) and (accumulated > 1) != (cfg.grad_accum > 1):
        return (f"it was trained with --grad-accum {accumulated}, and only a run that accumulates keeps accumulators: "
                f"resume it with {'a --grad-accum above 1' if accumulated > 1 else '--grad-accum 1'}")
    was, now = _model_of(before), _model_of(settings)
    if was is None or now is None or before.get("init_from") or cfg.init_from:  # (--init-from's model: when read)
        return None
    bpe_text = cfg.vocab == "gpt2" and not _is_prepared(cfg.data)  # (GPT-2's ids: a known vocabulary, padded)
    shape = ["n_layer", "n_embd", "n_positions", "learned_residual_scale"] + ["padded_vocab_size"] * bpe_text
    if sizes := [f"{name} {getattr(was, name)} -> {getattr(now, name)}" for name in shape
                 if getattr(was, name) != getattr(now, name)]:
        return f"its model is of another shape ({', '.join(sizes)}): resume it with the model's flags it had"
    on = [[name for name in DROPOUTS if config.dropout_rate(name) > 0] for config in (was, now)]
    if on[0] != on[1]:
        return (f"its model was trained with dropout at {', '.join(on[0]) or 'no layer'}, and this run's would drop at "
                f"{', '.join(on[1]) or 'none'}: a dropout layer keeps random state only at a rate above 0, so resume "
                "it with rates above 0 where they were (0.1 to 0.2 resumes) and 0 elsewhere")
    return None


def _changes(cfg: TrainConfig, before: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """What differs between the run recorded in `before` (its run.json) and this one's `identity`, each said as
    'name: was -> now'."""
    def change(name: str, was: Any, now: Any) -> str:
        if name == "data" and before.get("data_path") and isinstance(now, str):  # "a.txt" here and there: where
            was, now = before["data_path"], os.path.realpath(now)
        shown = [float(f"{v:.12g}") if isinstance(v, float) else v for v in (was, now)]  # 6e-05, not 5.99...e-05
        return f"{name}: {shown[0]!r} -> {shown[1]!r}"

    moot = {"vocab"} if _is_prepared(cfg.data) else set()  # (it tokenizes raw text; shards are compared by digest)
    if (model := _model_of(before["settings"])) is not None and model == _model_of(identity["settings"]):  # (flags
        # that say what the preset says: --n-layer 2 on a 2-layer preset)
        moot.add("model")
    changed = [change(k, before["settings"].get(k), v) for k, v in identity["settings"].items()
               if k not in moot and not _same_setting(k, before["settings"].get(k), v, before)]
    if identity.get("texts_changed"):  # (the raw texts the dataset is made from again: said by file)
        changed.append(f"the texts of --data ({identity['texts_changed']})")
    elif "data_sha256" in identity and before.get("data_sha256") != identity["data_sha256"]:
        changed.append("the dataset (its manifest differs)")
    if before.get("backend", keras.backend.backend()) != keras.backend.backend():  # (older records have none)
        changed.append(f"backend: {before['backend']!r} -> {keras.backend.backend()!r} (KERAS_BACKEND)")
    if "xla" in identity and before.get("xla", identity["xla"]) != identity["xla"]:  # (recorded where it matters)
        changed.append(f"XLA: {before['xla']!r} -> {identity['xla']!r} (--no-xla, or a --strategy that runs without "
                       "it: TensorFlow's dropout masks differ)")
    return changed


def _model_of(settings: dict[str, Any]) -> GPT2Config | None:
    """The model config a run's preset and model flags make (a flag equal to the preset's value changes nothing),
    or None where a record's cannot be made."""
    try:
        return GPT2Config.from_preset(settings["preset"], vocab_size=VOCAB_SIZE, **settings["model"])
    except (KeyError, TypeError, ValueError):
        return None


def run_record(cfg: TrainConfig, identity: dict[str, Any], placement: Placement) -> dict[str, Callable[[str], None]]:
    """run.json's writer: the run's identity (checked on resume) and where it ran (not checked)."""
    where = {"replicas": placement.replicas, "devices": placement.devices, "processes": placement.processes}
    return {os.path.join(cfg.out, RUN_RECORD): json_writer({**identity, **where}, indent=1)}


def train(cfg: TrainConfig) -> tuple[GPT2, dict[str, list[float]]]:
    """Train (or resume) a run, then write its model as `cfg.out`/model.keras (`inference_model`, as `tf-gpt2
    train` does); returns the model as trained and the Keras history (empty where the run's checkpoint had reached
    `cfg.steps` already: nothing was trained, and the model is the checkpoint's).

    One process at a time may train in `cfg.out`: a second one is refused while the first runs. In a run of many
    processes (keras.distribution on JAX), `cfg.out` is storage they all see: each reads the checkpoint to resume,
    process 0 writes.
    """
    refuse_writing_over_inputs(cfg.out, cfg.data, cfg.init_from)
    refuse_writing_over_inputs(os.path.join(cfg.out, MODEL_FILE), cfg.init_from)
    refuse_another_output(cfg.out)
    warn_of_a_folder_of_texts(cfg.out, "a training run")

    def shared() -> tuple[dict[str, Any], int]:  # what the processes or workers of a run must share (read only there)
        return ({name: value for name, value in dataclasses.asdict(cfg).items() if name not in PER_PROCESS_FIELDS},
                _checkpoint_found(os.path.join(cfg.out, CHECKPOINT)))

    placement = place_run(cfg, GPT2.get_layout_map,
                          lambda refused: refuse_other_settings_in_other_processes(*shared(), refused))
    if cfg.strategy == "multiworker":
        with placement.scope():
            refuse_other_settings_in_other_workers(*shared())
    refuse_float16_on_a_jax_cpu(_loss_scaled(run_settings(cfg)))
    cfg.check_samples_used(placement.processes)
    with exclusive(cfg.out, "training run") if placement.is_chief else contextlib.nullcontext():
        model, history = _train(cfg, placement)
        _save_model(model, os.path.join(cfg.out, MODEL_FILE), placement.is_chief, cfg.verbose)
        return model, history


def _save_model(model: GPT2, path: str, write: bool, verbose: int) -> None:
    """The trained model as `inference_model` makes it, saved; in a run of many processes, gathered by all of them,
    written by the one that writes."""
    trained = inference_model(model)
    if write:
        save_keras(trained, path)
        if verbose:
            print(f"saved {path}")


def _refuse_a_finished_run_without_checkpoint(cfg: TrainConfig) -> None:
    """A run's folder whose checkpoint was removed, its model kept: a new run there replaced the model without a
    word, and mixed its logs with the old run's. Its run.json alone (a run killed between writing it and its first
    checkpoint) starts over under the same settings: the same run; under others, refused as a resume is."""
    out = cfg.out
    for name in (CHECKPOINT, MODEL_FILE, RUN_RECORD):  # (taken for no file, the run started over and replaced it)
        refuse_dangling_link(os.path.join(out, name), "a run reads and writes the file it leads to: make it there, "
                                                      "or remove the link")
    if os.path.exists(os.path.join(out, CHECKPOINT)):
        return
    if os.path.exists(os.path.join(out, MODEL_FILE)):
        raise ValueError(f"{out} holds {MODEL_FILE} of an earlier run, and no {CHECKPOINT} to resume it from: a new "
                         "run there would replace it; give another --out, or remove it first")
    try:
        before = _read_record(out)
    except UNREADABLE_RECORD:  # none, or another program's
        return
    changed = _changes(cfg, before, {"settings": run_settings(cfg)})
    if changed and not cfg.resume_with_changes:
        raise ValueError(f"{out} holds the {RUN_RECORD} of a run with other settings ({'; '.join(changed)}) and no "
                         f"{CHECKPOINT}: a new run there would replace it; give another --out, or "
                         "--resume-with-changes to start over there")


def _check_samples_print(cfg: TrainConfig, placement: Placement, characters: Sequence[str] | None) -> None:
    """Refuse a standard output that cannot write the samples a run prints (it failed at the first one, after a
    round of training): a model of `characters`, or of GPT-2's BPE (None), which may write any character."""
    if cfg.verbose and cfg.sample_tokens and cfg.strategy is None and placement.processes == 1:  # (samples printed)
        try:
            check_output_writes(characters)
        except ValueError as e:
            raise ValueError(f"{e}, or print no samples (--sample-tokens 0)") from None


def _train(cfg: TrainConfig, placement: Placement) -> tuple[GPT2, dict[str, list[float]]]:
    _refuse_a_finished_run_without_checkpoint(cfg)
    source = pretrained(cfg) if cfg.init_from else None  # a wrong --init-from fails before the text is tokenized
    if cfg.vocab != "char" and not _is_prepared(cfg.data):  # BPE samples: before the text is tokenized
        _check_samples_print(cfg, placement, None)
    config = model_config(cfg, None, source)  # a bad model flag: said before minutes of tokenizing
    jit_compile = cfg.jit_compile if placement.jit_compile is None else placement.jit_compile
    # TensorFlow draws other dropout masks in XLA than outside it: with dropout, XLA on or off is another run
    on_tensorflow = keras.backend.backend() == "tensorflow"
    xla = {"xla": jit_compile} if on_tensorflow and any(map(config.dropout_rate, DROPOUTS)) else {}
    files = None if _is_prepared(cfg.data) else _raw_texts(cfg)
    texts = {}  # how the raw texts changed since the run's dataset was made, to say (not recorded)
    if os.path.exists(os.path.join(cfg.out, CHECKPOINT)):  # other settings or data: refused before the text is
        texts = _data_before_tokenizing(cfg, files)  # tokenized again
        check_resume(cfg, {"settings": run_settings(cfg), **xla, **texts})
    data_dir = prepared_data(cfg, source and source.config.characters, files)
    train_data, val_data = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")
    train_data.check_block(cfg.block_size, cfg.batch_size)
    checkpoint = os.path.join(cfg.out, CHECKPOINT)
    identity = {**run_identity(cfg, data_dir), **xla}
    keras.utils.set_random_seed(cfg.seed)
    source = source and matched_to_data(cfg, source, train_data.manifest)
    with placement.scope():
        model = build_model(cfg, train_data.manifest, placement, source)  # bad settings fail here, before any write
        source = None  # (its weights are the model's now: kept, a second copy stayed in memory all run long)
        if os.path.exists(checkpoint):
            changed = check_resume(cfg, {**identity, **texts})
            if changed and process_index() == 0:  # (run.json is rewritten with them: the old ones are said here)
                print(f"note: resuming with changes: {'; '.join(changed)}", file=sys.stderr)
                if any(change.startswith("init_from:") for change in changed):
                    print("note: a resume goes on from its checkpoint's weights: --init-from gives the model's "
                          "settings only", file=sys.stderr)
        optimizer = make_optimizer(model, cfg)
        gradient_norm = clip_by_global_norm(optimizer, cfg.grad_clip) if on_tensorflow else None  # (make_optimizer)
        if model.dtype_policy.compute_dtype == "float16":
            # Keras adds loss scaling for mixed_float16 alone; a float16 LoRA base (--base-dtype float16) needs it as
            # much: without it, backward activations underflow (a tiny model's adapter gradients were off by up
            # to 14%; by 0.1% with it). The wrapper unscales before the clip above sees the gradient.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name="loss_scale_optimizer")
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile, steps_per_execution=cfg.steps_per_execution,
        )
        # Keras' TensorFlow trainer would build the optimizer inside the first trace of its train step; a
        # function that creates variables is traced twice, so it is built here, once.
        model.optimizer.build(model.trainable_variables)
        start = 0
        if os.path.exists(checkpoint):
            start = restore_checkpoint(model, checkpoint)
            if cfg.verbose:
                print(f"resuming from {checkpoint} at step {start}")
        if start >= cfg.steps:
            if placement.is_chief:
                print(f"note: {checkpoint} is at step {start}, and --steps is {cfg.steps}: nothing is left to train",
                      file=sys.stderr)
            return model, {}
        # run.json is written with each checkpoint, so that it names the settings the checkpoint was trained under
        # (a --resume-with-changes that fails before its first checkpoint leaves the old ones).
        return model, _fit(cfg, model, start, train_data, val_data, placement, gradient_norm,
                           run_record(cfg, identity, placement))


def round_end_step(k: int, steps: int, interval: int) -> int:
    """The step round k ends at: rounds of `interval` steps, the last one short where `interval` does not divide."""
    return min((k + 1) * interval, steps)


def round_groups(start: int, steps: int, interval: int) -> list[tuple[int, int, int]]:
    """The rounds left after step `start` as (length in steps, first round, last round) of rounds of one length
    (Keras' rounds of one `fit` all have one): the first, short where a resumed run's checkpoint lies inside it, the
    whole ones, the last, short where `interval` does not divide `steps`. Counted, not listed (a huge --steps
    listed every round end)."""
    first, last = start // interval, -(-steps // interval) - 1  # (in integers: a float's ceil is off past 2**53)
    spans = [(first, first)] + [(k, j) for k, j in ((first + 1, last - 1), (last, last)) if first < k <= j]
    groups: list[tuple[int, int, int]] = []
    for k, j in spans:
        length = round_end_step(k, steps, interval) - max(start, k * interval)
        if groups and groups[-1][0] == length:
            groups[-1] = (length, groups[-1][1], j)
        else:
            groups.append((length, k, j))
    return groups


def listens_for_ctrl_c(cfg: TrainConfig, placement: Placement) -> bool:
    """Whether a run notes Ctrl-C (`StopOnInterrupt`): in a run of many processes (JAX's, or tf.distribute's
    workers, each a placement of one process) it stays Python's own: each process would stop at its own batch,
    and those that went on would wait in their collectives for the others."""
    return placement.processes == 1 and cfg.strategy != "multiworker"


def _fit(cfg: TrainConfig, model: GPT2, start: int, train_data: TokenShards, val_data: TokenShards,
         placement: Placement, gradient_norm, record: dict[str, Callable[[str], None]]) -> dict[str, list[float]]:
    """The rounds left of the run, from step `start`; the files of `record` written with each checkpoint."""
    tf = tensorflow()

    checkpoint = os.path.join(cfg.out, CHECKPOINT)
    round_end = functools.partial(round_end_step, steps=cfg.steps, interval=cfg.eval_interval)
    groups = round_groups(start, cfg.steps, cfg.eval_interval)
    length, first_round, _ = groups[0]
    first = length * cfg.grad_accum  # (whole rounds and the last one are checked with the settings)
    if first % cfg.steps_per_execution:  # Keras would run a whole execution: steps untrained, or trained twice
        raise ValueError(f"the checkpoint at step {start} lies {length} step(s) before the round end at step "
                         f"{round_end(first_round)} (--eval-interval {cfg.eval_interval}): its {first} micro-batches "
                         f"are no whole number of --steps-per-execution {cfg.steps_per_execution}; resume with a "
                         f"--steps-per-execution that divides {first}")

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    val_ds = None
    if len(val_data) > cfg.block_size:
        val_ds = val_data.dataset(cfg.block_size, cfg.batch_size, cfg.seed + 1, steps=cfg.eval_batches)
        val_ds = val_ds.with_options(options)
    else:  # said on every run, from the CLI too: a run without validation loss should not look like one with it
        print(f"note: the val split has {len(val_data)} tokens, fewer than block_size + 1 = {cfg.block_size + 1}: "
              "no validation loss (add text, lower --block-size, or prepare with a larger --val-fraction)",
              file=sys.stderr)
    nan_guard = StopOnNaN()
    interrupt = StopOnInterrupt(listen=listens_for_ctrl_c(cfg, placement), last_round=groups[-1][2])
    callbacks = [*step_callbacks(cfg.batch_size * cfg.block_size, nan_guard),
                 SaveCheckpoint(checkpoint, round_end, write=placement.is_chief, beside=record)]
    if gradient_norm is not None:
        callbacks.insert(1, LogGradientNorm(gradient_norm))
    if cfg.sample_tokens and cfg.strategy is None and placement.processes == 1:  # a sample is one process's work
        encode, decode = codec(train_data.manifest)
        try:
            prompt_ids = encode(cfg.sample_prompt)
        except ValueError as e:
            if cfg.sample_prompt != TrainConfig.sample_prompt:
                raise ValueError(f"sample_prompt (--sample-prompt): {e}") from None
            prompt_ids = []  # the default, a line break, in characters without one: from the start instead
        _check_samples_print(cfg, placement, train_data.manifest.get("chars"))  # before any step
        log_dir = os.path.join(cfg.out, "logs", "samples") if cfg.tensorboard else None
        callbacks.append(TextSample(prompt_ids, cfg.sample_tokens, decode, round_end, log_dir, cfg.verbose,
                                    vocab_end=train_data.manifest["vocab_size"]))
    tensorboard = None
    if cfg.tensorboard and placement.is_chief:  # each compiled call's logs (Keras calls the batch hooks once per call)
        tensorboard = RunTensorBoard(os.path.join(cfg.out, "logs"), update_freq=1)
        callbacks.append(tensorboard)
    callbacks.append(interrupt)  # (after the batch's other callbacks: the round's checkpoint is written first)
    callbacks.append(RunProgress(rounds=groups[-1][2] + 1))  # last, where Keras puts its own: it shows the logs
    # --steps counts optimizer steps whatever the interval. Keras' rounds ("epochs") of one fit all have one
    # length, so the rounds left are run as one fit per run of equal lengths.
    history: dict[str, list[float]] = {}
    for length, first_round, last_round in groups:
        if nan_guard.went_bad is not None:
            break
        train_ds = train_data.dataset(cfg.block_size, cfg.batch_size, cfg.seed, start_step=start * cfg.grad_accum)
        if tensorboard is not None:
            tensorboard.first_batch = start * cfg.grad_accum
        micro_batches = length * cfg.grad_accum  # each step takes grad_accum of them
        with interrupt.listening():
            fitted = model.fit(
                train_ds.with_options(options), initial_epoch=first_round, epochs=last_round + 1,
                steps_per_epoch=micro_batches,
                validation_data=val_ds, validation_steps=cfg.eval_batches if val_ds is not None else None,
                callbacks=fit_callbacks(callbacks, model, epochs=last_round + 1, steps=micro_batches,
                                        verbose=cfg.verbose),
                verbose=cfg.verbose, shuffle=False,
            )
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(values)
        start = round_end(last_round)
    if nan_guard.went_bad is not None:
        float16 = model.dtype_policy.compute_dtype == "float16"  # its loss scale is optimizer state: no way back
        clip = f"a --grad-clip below {cfg.grad_clip:g}" if cfg.grad_clip else "--grad-clip 1"  # one that changes it
        if os.path.exists(checkpoint):  # the same command would resume into the same loss: resuming is exact
            kept = (f"the last good checkpoint is {checkpoint}. Continue from it with a lower --learning-rate or "
                    f"{clip} and --resume-with-changes, or start over in a new --out"
                    + (" (also to train in bfloat16 or float32 instead of float16)" if float16 else ""))
        else:
            kept = (f"no checkpoint was written. Try a lower --learning-rate, {clip}"
                    + (", or bfloat16 or float32 instead of float16" if float16 else ""))
        raise FloatingPointError(f"training stopped: {nan_guard.went_bad}; {kept}")
    return history
