"""Where a training run computes: one device, a tf.distribute strategy (TensorFlow backend), or Keras' own
`keras.distribution` (JAX backend: data parallel, or the model split by `GPT2.get_layout_map`, over one
process or many).

>>> Mesh.parse("2x4")
Mesh(batch=2, model=4)
>>> Mesh.parse("2x4").devices
8
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import warnings
from typing import Any, Callable, ContextManager

import numpy as np


def tensorflow() -> Any:
    """TensorFlow, for what only it does in a run (tf.data, summaries), kept off the GPUs when Keras computes on
    another backend (JAX): found first, TensorFlow maps most of each GPU's memory and leaves JAX little. Keras' own
    guides for tf.data under JAX hide the GPUs from TensorFlow the same way."""
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow found its devices before tf_gpt2 asked for it: too late to hide them
            if tf.config.get_visible_devices("GPU"):
                warnings.warn("TensorFlow started on the GPU before tf_gpt2 could keep it off: it holds GPU memory "
                              "that JAX needs. Call tf.config.set_visible_devices([], 'GPU') before TensorFlow runs "
                              "its first op", stacklevel=2)
    return tf


# The environment variables `keras.distribution.initialize()` reads when no flag is given.
CLUSTER_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                     "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclasses.dataclass(frozen=True)
class Mesh:
    """A device mesh's shape: `batch` data-parallel rows times `model` devices that split each weight."""

    batch: int
    model: int

    @classmethod
    def parse(cls, text: str) -> "Mesh":
        parts = text.lower().split("x")
        if len(parts) != 2 or not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):  # (not "²")
            raise ValueError(f"mesh must be BATCHxMODEL with two positive integers (e.g. 2x4), got {text!r}")
        return cls(int(parts[0]), int(parts[1]))

    @property
    def devices(self) -> int:
        return self.batch * self.model


@dataclasses.dataclass(frozen=True)
class Placement:
    """What the trainer needs to know about where it runs."""

    scope: Callable[[], ContextManager[Any]]  # build, compile and fit inside it
    replicas: int  # data-parallel copies of each batch's work
    processes: int = 1
    process_id: int = 0
    devices: int = 1
    jit_compile: bool | None = None  # None: as configured
    mesh: Mesh | None = None  # the weights are split over its model axis (keras.distribution.ModelParallel)

    @property
    def is_chief(self) -> bool:
        """The process that writes the run's files (checkpoints, run.json, logs, model.keras)."""
        return self.process_id == 0

    def check(self, config) -> None:
        """Refuse a model (a GPT2Config) whose split weights do not divide evenly over the mesh (JAX splits only
        evenly), before anything is built."""
        if self.mesh is None:
            return
        m, b = self.mesh.model, self.mesh.batch
        sizes = {"token-embedding rows (vocab_size rounded up to vocab_multiple)": (config.padded_vocab_size, m),
                 "n_embd": (config.n_embd, math.lcm(m, b))}
        for what, (size, parts) in sizes.items():
            if size % parts:
                multiple = math.lcm(config.vocab_multiple, m)  # (the multiple given, made one of the model axis too)
                hint = f" (pass --vocab-multiple {multiple})" if what.startswith("token") else ""
                raise ValueError(f"the model's {size} {what} do not split evenly over the mesh "
                                 f"{b}x{m}: they must be a multiple of {parts}{hint}")


def place_run(cfg, layout_map: Callable[[Any], Any], agree: Callable[[bool], None] | None = None) -> Placement:
    """The placement the run `cfg` (a TrainConfig) asks for, checked against the backend it runs on;
    `layout_map(device_mesh)` says how the model's weights split (`GPT2.get_layout_map`). In a run of many
    processes, `agree(refused)` is called by every process once they have joined, before any refuses its
    placement: a collective that refuses what differs between them (a process refused alone, the others waited
    for it in vain)."""
    import keras

    backend = keras.backend.backend()
    cluster = [v for v in CLUSTER_VARIABLES if os.environ.get(v)]
    if cluster and not cfg.distribution:
        raise ValueError(f"{', '.join(cluster)} set: a run of many processes needs --distribution data|model")
    if cfg.distribution:
        if backend != "jax":
            raise ValueError(f"--distribution, --mesh and many processes use keras.distribution, which needs the JAX "
                             f"backend: run with KERAS_BACKEND=jax (this process runs {backend}); on TensorFlow use "
                             "--strategy")
        return _keras_distribution(cfg, layout_map, agree)
    if cfg.strategy and backend != "tensorflow":
        raise ValueError(f"--strategy {cfg.strategy} is a tf.distribute strategy and needs the TensorFlow backend "
                         f"(this process runs {backend}); on JAX use --distribution data|model")
    workers = _tf_config_workers()
    if workers > 1 and backend != "tensorflow":  # (a worker trained alone, as process 0, writing every file)
        raise ValueError(f"TF_CONFIG names a cluster of {workers} workers, but this process would train alone: on "
                         f"{backend}, a run of many processes is --distribution data|model with --num-processes, "
                         "--process-id and --coordinator; or unset TF_CONFIG")
    if workers > 1 and cfg.strategy in (None, "mirrored"):
        raise ValueError(f"TF_CONFIG names a cluster of {workers} workers, but this process would train alone: train "
                         "with --strategy multiworker, or unset TF_CONFIG")
    if cfg.strategy == "multiworker" and workers < 2:
        raise ValueError("--strategy multiworker trains over the workers TF_CONFIG names, and it names "
                         f"{workers or 'none'}: this process would train alone. Set TF_CONFIG on each worker, or use "
                         "--strategy mirrored on one machine")
    if cfg.strategy:
        placement = _tf_strategy(cfg.strategy)
        if cfg.batch_size % placement.replicas:  # (unequal parts: Keras' mean of replica means weighs rows unequally)
            raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the {placement.replicas} replicas "
                             f"--strategy {cfg.strategy} trains on: each takes an equal part of the batch")
        if placement.replicas > 1 and (cfg.precision == "mixed_float16" or cfg.base_dtype == "float16"):
            raise ValueError(f"float16 under --strategy {cfg.strategy} ({placement.replicas} replicas): Keras' loss "
                             "scaling decides from each replica's own gradients whether a step overflowed, so one "
                             "replica applies a step another skips. Train in mixed_bfloat16 or float32")
        if placement.replicas > 1 and cfg.grad_accum > 1 and False in (placement.jit_compile, cfg.jit_compile):
            raise ValueError(f"--grad-accum {cfg.grad_accum} under --strategy {cfg.strategy} without XLA "
                             f"({placement.replicas} replicas): Keras applies the accumulated update inside a "
                             "conditional, which tf.distribute cannot synchronise across replicas (the first step "
                             "fails). Give the whole batch as --batch-size: each replica takes its part")
        return placement
    return Placement(scope=contextlib.nullcontext, replicas=1)


def _tf_config_workers() -> int:
    """The chief and workers TF_CONFIG's cluster names (0 without TF_CONFIG), as tf.distribute reads it."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        config = json.loads(raw)
    except ValueError:
        config = None
    cluster = (config.get("cluster") or {}) if isinstance(config, dict) else None  # none: tf.distribute runs alone
    if not isinstance(cluster, dict):
        raise ValueError(f"TF_CONFIG is not a JSON object with a 'cluster' of tasks: {raw[:200]!r}")
    return sum(len(tasks) if isinstance(tasks, (list, dict)) else 1
               for kind, tasks in cluster.items() if kind in ("chief", "worker"))


def _tf_strategy(name: str) -> Placement:
    import tensorflow as tf

    from tf_gpt2.distribute import patch_keras_for_tf_distribute

    patch_keras_for_tf_distribute()
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:  # a TPU VM's own TPU ("local"), or a Cloud TPU named as TensorFlow's resolver reads it (TPU_NAME ...)
        named = [f"{v}={os.environ[v]}" for v in ("TPU_NAME", "TPU_CONFIG", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")
                 if os.environ.get(v)]
        try:  # (without one: "Please provide a TPU Name to connect to", a name no flag takes)
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(None if named else "local")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as e:
            said = str(e).split(". ")[0].rstrip(".")  # its first sentence ("TPUs not found in the cluster")
            if named:
                raise ValueError(f"--strategy tpu could not reach the TPU that {named[0]} names ({said})") from e
            raise ValueError(f"--strategy tpu found no TPU on this machine ({said}): run it on a TPU VM, or name a "
                             "Cloud TPU in TPU_NAME") from e
        strategy = tf.distribute.TPUStrategy(resolver)
    jit_compile = None
    if name in ("mirrored", "multiworker") and not tf.config.list_physical_devices("GPU"):
        print("note: TensorFlow has no XLA collectives on CPU; this distributed run compiles without XLA")
        jit_compile = False
    # Each worker of a MultiWorkerMirroredStrategy writes its own --out, as tf.distribute expects.
    return Placement(scope=strategy.scope, replicas=strategy.num_replicas_in_sync,
                     devices=strategy.num_replicas_in_sync, jit_compile=jit_compile)


# JAX's words for what a run of many processes lacks, and the flag (or Keras' variable) that gives it
UNJOINED = {"coordinator_address": "process 0's host:port: give --coordinator (or KERAS_DISTRIBUTION_JOB_ADDRESSES)",
            "Number of processes": "the count of processes: give --num-processes (or KERAS_DISTRIBUTION_NUM_PROCESSES)",
            "process id": "this process's index: give --process-id (or KERAS_DISTRIBUTION_PROCESS_ID)"}


def _keras_distribution(cfg, layout_map: Callable[[Any], Any], agree: Callable[[bool], None] | None) -> Placement:
    import jax
    import keras

    if cfg.num_processes or cfg.coordinator or any(os.environ.get(v) for v in CLUSTER_VARIABLES):
        if not jax.distributed.is_initialized():  # flags first; Keras reads its variables for what is not given
            try:
                keras.distribution.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)
            except ValueError as e:  # (JAX's own words: "coordinator_address should be defined.")
                lacking = [need for words, need in UNJOINED.items() if words in str(e)]
                if not lacking:
                    raise
                raise ValueError(f"a run of many processes needs {lacking[0]}") from e
    try:
        placement = _checked_placement(cfg, layout_map)
    except Exception:
        if agree and jax.process_count() > 1:
            with contextlib.suppress(Exception):  # (its own error is the one to say)
                agree(True)
        raise
    if agree and jax.process_count() > 1:
        agree(False)
    return placement


def _checked_placement(cfg, layout_map: Callable[[Any], Any]) -> Placement:
    """The keras.distribution placement of a run whose processes have joined, if this process can take it."""
    import jax
    import keras

    count = cfg.num_processes or os.environ.get(CLUSTER_VARIABLES[1])  # (the flag, else Keras' variable)
    if count and str(count) != str(jax.process_count()):
        given = f"--num-processes {count}" if cfg.num_processes else f"{CLUSTER_VARIABLES[1]}={count}"
        raise ValueError(f"{given}, but {jax.process_count()} processes joined this run: "
                         "give every process the same count")
    devices = keras.distribution.list_devices()
    mesh = Mesh.parse(cfg.mesh) if cfg.mesh else (
        Mesh(len(devices), 1) if cfg.distribution == "data" else Mesh(1, len(devices)))
    if mesh.devices != len(devices):
        raise ValueError(f"mesh {mesh.batch}x{mesh.model} has {mesh.devices} devices, this run has {len(devices)} "
                         f"({jax.process_count()} process(es))")
    if cfg.distribution == "data" and mesh.model != 1:
        raise ValueError(f"--distribution data keeps the whole model on each device: its mesh is {len(devices)}x1, "
                         f"not {cfg.mesh}; use --distribution model to split the weights")
    if cfg.batch_size % mesh.batch:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the mesh's {mesh.batch} batch rows")
    if jax.process_count() > 1 and not os.path.exists(os.path.join(cfg.data or "", "manifest.json")):
        raise ValueError("a run of many processes reads prepared shards: run `tf-gpt2 prepare` once and pass its "
                         f"directory as --data (got {cfg.data!r})")
    if cfg.distribution == "data":
        distribution = keras.distribution.DataParallel(devices=devices)
    else:
        device_mesh = keras.distribution.DeviceMesh((mesh.batch, mesh.model), ("batch", "model"), devices)
        distribution = keras.distribution.ModelParallel(layout_map=layout_map(device_mesh),
                                                        batch_dim_name="batch")
    return Placement(scope=distribution.scope, replicas=mesh.batch, processes=jax.process_count(),
                     process_id=jax.process_index(), devices=len(devices),
                     mesh=mesh if cfg.distribution == "model" else None)


FLOAT16_ON_A_JAX_CPU = ("float16 on JAX's CPU backend: XLA's CPU matrix products take no float16 inputs with a "
                        "float32 result, which Keras' attention asks for; there, train in mixed_bfloat16 or float32, "
                        "and run a float16 model on the TensorFlow backend (JAX runs float16 on a GPU)")


def refuse_float16_on_a_jax_cpu(float16: bool) -> None:
    """Refuse a run computing in float16 (`float16`) where JAX compiles for a CPU: every compiled step fails there
    ("The precision 'F16_F16_F32' is not supported by dot_general on CPU"), said after its text was tokenized."""
    import keras

    if float16 and keras.backend.backend() == "jax":
        import jax

        if jax.default_backend() == "cpu":
            raise ValueError(f"a run in {FLOAT16_ON_A_JAX_CPU}")


NO_CHECKPOINT, UNREADABLE_CHECKPOINT = -1, -2


def _digests(settings: dict[str, Any]) -> list[int]:
    """A 24-bit digest of each setting, in the order of their sorted names (int32: what the collectives carry)."""
    import hashlib

    return [int.from_bytes(hashlib.sha256(json.dumps(settings[name], sort_keys=True, default=str).encode())
                           .digest()[:3], "little") for name in sorted(settings)]


def _refuse_differing(settings: dict[str, Any], every: np.ndarray, unit: str, aside: str, same_checkpoint: str) -> None:
    """Refuse, named, the settings whose digests differ between the processes or workers (`unit`), and checkpoints
    that differ (one would resume, another start over); `every`: [processes or workers, the digests of the sorted
    settings and the checkpoint each found (its step, NO_CHECKPOINT or UNREADABLE_CHECKPOINT)]."""
    units = unit + ("es" if unit.endswith("s") else "s")
    if differ := [name for name, column in zip(sorted(settings), every.T) if len(set(column.tolist())) > 1]:
        raise ValueError(f"the {units} of this run were given other settings ({', '.join(differ)}): give each one "
                         f"the same command, {aside}")
    if len(set(every[:, -1].tolist())) > 1:
        found = {NO_CHECKPOINT: "none", UNREADABLE_CHECKPOINT: "one it cannot read"}
        each = ", ".join(f"{unit} {i}: {found.get(step, f'step {step}')}" for i, step in enumerate(every[:, -1]))
        raise ValueError(f"the {units} of this run found other checkpoints in their --out ({each}): {same_checkpoint}")


def refuse_other_settings_in_other_workers(settings: dict[str, Any], checkpoint: int) -> None:
    """Under --strategy multiworker (tf.distribute), refuse settings that differ between the workers, named: each
    trained with its own (another learning rate on one, and the replicas' weights drifted apart); so are the
    checkpoints their --out hold (`checkpoint`, as in `refuse_other_settings_in_other_processes`). A collective:
    every worker calls it, in the strategy's scope."""
    import tensorflow as tf

    strategy, mine = tf.distribute.get_strategy(), [*_digests(settings), checkpoint]
    each = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(mine, tf.int32))
    _refuse_differing(settings, strategy.gather(each, axis=0).numpy().reshape(-1, len(mine)), "worker",
                      "its TF_CONFIG and --out aside", "each worker resumes its own copy of the run's checkpoint: give "
                      "each the same one, or start the run over in new folders")


def refuse_other_settings_in_other_processes(settings: dict[str, Any], checkpoint: int, refused: bool) -> None:
    """In a run of many processes (keras.distribution on JAX), refuse settings that differ between them, named: each
    trained with its own (another learning rate on one wrote a model of both, without an error); so are checkpoints
    that differ (the step each process's --out holds, NO_CHECKPOINT or UNREADABLE_CHECKPOINT: one resumed, another
    started over), and a run that another process `refused` (this one waited for it, then failed in JAX's words). A
    collective: every process calls it."""
    from jax.experimental import multihost_utils

    every = np.asarray(multihost_utils.process_allgather(np.array([*_digests(settings), checkpoint, refused],
                                                                  np.int32)))
    if refused:
        return  # (its own error says why)
    if others := [str(i) for i, row in enumerate(every) if row[-1]]:
        which = f"process {others[0]}" if len(others) == 1 else f"processes {', '.join(others[:-1])} and {others[-1]}"
        raise ValueError(f"{which} of this run refused it (its own error says why): stopped here too")
    _refuse_differing(settings, every[:, :-1], "process", "its --process-id aside", "--out must be storage every "
                      "process sees, the same folder (a shared disk, NFS, a mounted bucket)")


def held_elsewhere(variable) -> bool:
    """Whether shards of a variable's value live in other processes (a JAX array of a run of many), so that
    `host_array` is a collective."""
    import keras

    if keras.backend.backend() != "jax":
        return False
    import jax

    value = getattr(variable, "value", variable)
    return isinstance(value, jax.Array) and not value.is_fully_addressable


def host_array(variable) -> np.ndarray:
    """A variable's whole value as numpy, also when its shards live in other processes (then a collective:
    every process must call it)."""
    import keras

    if held_elsewhere(variable):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(getattr(variable, "value", variable), tiled=True))
    return keras.ops.convert_to_numpy(variable)


def given_process_index(cfg) -> int:
    """This process's index in a run of many as given (`cfg.process_id`, else KERAS_DISTRIBUTION_PROCESS_ID; 0 where
    neither is), read without a call of JAX's: its distributed start-up must come before the first one."""
    if cfg.process_id is not None:
        return cfg.process_id
    given = os.environ.get(CLUSTER_VARIABLES[2], "0").strip()
    return int(given) if given.isdigit() else 0


def process_index() -> int:
    """This process's index in a run of many (keras.distribution on JAX); 0 otherwise."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index()
    return 0
