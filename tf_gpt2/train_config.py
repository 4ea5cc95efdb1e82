"""The settings of a training run: one dataclass, checked when it is made. It imports no TensorFlow,
so the command line can offer its fields as flags without loading it.

>>> TrainConfig(steps=10, learning_rate=1e-3).min_learning_rate   # the cosine ends at a tenth
0.0001
>>> TrainConfig(steps=0)
Traceback (most recent call last):
...
ValueError: steps must be a positive integer, got 0
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
from typing import Any

from tf_gpt2.config import PRESETS, GPT2Config
from tf_gpt2.devices import CLUSTER_VARIABLES, Mesh

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
BASE_DTYPES = ("bfloat16", "float16")  # a frozen LoRA base in 16 bits (its adapters stay float32)
STRATEGIES = (None, "mirrored", "multiworker", "tpu")  # tf.distribute, on TensorFlow
DISTRIBUTIONS = (None, "data", "model")  # keras.distribution, on JAX
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38  # the optimizer holds its settings in float32
FLOAT32_TINY = 1.1754943508222875e-38  # float32's smallest normal: a rate below it trains nothing (it flushes to 0)

DATA_FIELDS = ("vocab_size", "characters")  # GPT2Config's fields that a run takes from its data, not from `model`
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(GPT2Config) if f.name not in DATA_FIELDS)  # what it may set


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs. Most fields are the `tf-gpt2 train` flag of the same name; `model` is set by the
    `--n-layer` ... `--loss-chunk` overrides, `jit_compile` by `--no-xla`, and `beta_1`, `beta_2`, `tensorboard` and
    `verbose` are the Python API's only. The checks here name fields; those made once the run has its data and
    checkpoint (in `training.train`) name the flag (`--eval-interval`: `eval_interval`)."""

    out: str = "runs/gpt2"
    data: str | None = None  # prepared dir, text file/folder/glob; None: the embedded corpus
    vocab: str = "gpt2"  # or "char" (when raw text is tokenized for this run)
    preset: str = "gpt2-mini"
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  # GPT2Config overrides
    init_from: str | None = None  # any checkpoint GPT2.from_pretrained reads
    steps: int = 1000
    batch_size: int = 8
    block_size: int = 256
    learning_rate: float = 6e-4
    min_learning_rate: float | None = None  # None: learning_rate / 10
    warmup_steps: int = 100  # at most steps - 1: a longer warmup is shortened to that
    weight_decay: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.95
    grad_clip: float = 1.0  # global norm; 0 disables
    grad_accum: int = 1
    eval_interval: int = 100
    eval_batches: int = 20
    seed: int = 0
    precision: str = "float32"
    jit_compile: bool = True
    steps_per_execution: int = 1
    lora_rank: int = 0
    base_dtype: str | None = None  # with lora_rank: the frozen base held (and run) in "bfloat16" or "float16"
    strategy: str | None = None
    distribution: str | None = None
    mesh: str | None = None  # "BATCHxMODEL" devices; None: all devices on the distribution's one axis
    coordinator: str | None = None  # "host:port" of process 0, for a run of many processes
    num_processes: int | None = None
    process_id: int | None = None
    sample_prompt: str = "\n"
    sample_tokens: int = 64
    tensorboard: bool = True
    verbose: int = 1
    resume_with_changes: bool = False  # resume even if the settings differ from the checkpoint's run

    def check_samples_used(self, processes: int) -> None:
        """Refuse a sample prompt or length asked for where no samples are made (`processes`: the run's, once
        known)."""
        unused = "sample_tokens is 0 (no samples)" if self.sample_tokens == 0 else \
            f"a run under strategy {self.strategy} makes no samples" if self.strategy else \
            "a run of many processes makes no samples" if processes > 1 else None
        if unused and self.sample_prompt != TrainConfig.sample_prompt:
            raise ValueError(f"sample_prompt {self.sample_prompt!r} would not be used: {unused}")
        if unused and self.sample_tokens not in (0, TrainConfig.sample_tokens):
            raise ValueError(f"sample_tokens {self.sample_tokens} would not be used: {unused}")

    def __post_init__(self) -> None:
        for name in ("out", "data", "init_from", "mesh", "coordinator"):  # "" would fall back to the default
            if not isinstance(getattr(self, name), (str, os.PathLike, type(None))):
                raise TypeError(f"{name} must be a path or a name (a str), got {type(getattr(self, name)).__name__}"
                                + (": give a folder or a glob of the texts, or prepare them first "
                                   "(tf_gpt2.data.prepare takes a list)" if name == "data" else ""))
            if getattr(self, name) == "":
                raise ValueError(f"{name} is empty: give a value, or leave it out")
            if isinstance(getattr(self, name), os.PathLike):  # (a Path failed in run.json, after tokenizing)
                setattr(self, name, os.fspath(getattr(self, name)))
        if data_fixed := [name for name in DATA_FIELDS if name in self.model]:
            raise ValueError(f"model sets {data_fixed[0]}, which the run takes from its data (its tokens, or "
                             f"init_from's); vocab_multiple pads the token embedding")
        if unknown := sorted(set(self.model) - set(MODEL_FIELDS)):
            raise ValueError(f"model sets GPT2Config fields: {unknown[0]!r} is none ({', '.join(MODEL_FIELDS)})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        counts = {name: 1 for name in ("steps", "batch_size", "block_size", "grad_accum", "eval_interval",
                                       "steps_per_execution", "eval_batches")}
        counts.update(warmup_steps=0, lora_rank=0, sample_tokens=0)  # (sample_tokens 0: no samples)
        counts.update({name: least for name, least in (("num_processes", 1), ("process_id", 0))
                       if getattr(self, name) is not None})  # where given (num_processes 0 was blamed on process_id)
        for name, least in counts.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be a {'positive' if least else 'non-negative'} integer, got {value!r}")
            if value > INT32_MAX:  # (TensorFlow's shapes and counters failed on it without its name)
                raise ValueError(f"{name} must be at most 2**31 - 1, got {value}")
        for name in ("learning_rate", "min_learning_rate", "weight_decay", "grad_clip", "beta_1", "beta_2"):
            value = getattr(self, name)
            if value is None and name == "min_learning_rate":
                continue
            if not isinstance(value, numbers.Real) or isinstance(value, bool):  # (a Decimal: no JSON for run.json)
                raise ValueError(f"{name} must be a number, got {value!r}")
            # (a numpy float: no JSON either; float32's 1e-3 read as the 1e-3 it prints, not 0.0010000000475)
            setattr(self, name, float(str(value)) if hasattr(value, "dtype") else float(value))
        for name in ("beta_1", "beta_2"):
            if not 0 <= getattr(self, name) < 1:  # (also NaN) AdamW's moment decay: 1 or more never forgets, or grows
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not FLOAT32_TINY <= self.learning_rate <= FLOAT32_MAX:
            raise ValueError(f"learning_rate must be a positive number from float32's smallest normal (1.2e-38) to "
                             f"its largest (3.4e38), got {self.learning_rate!r}")
        if self.min_learning_rate is None:
            self.min_learning_rate = self.learning_rate / 10
        if not 0 <= self.min_learning_rate <= self.learning_rate:  # also refuses NaN
            raise ValueError(f"min_learning_rate must be in [0, learning_rate = {self.learning_rate}], got "
                             f"{self.min_learning_rate!r}: the cosine schedule would rise instead of decay")
        for name in ("weight_decay", "grad_clip"):
            if not 0 <= getattr(self, name) <= FLOAT32_MAX:
                raise ValueError(f"{name} must be a non-negative number up to float32's largest (3.4e38), got "
                                 f"{getattr(self, name)!r}")
        if self.learning_rate * self.weight_decay >= 1:  # (it trained to NaN, the advice naming other flags)
            raise ValueError(f"learning_rate x weight_decay is {self.learning_rate * self.weight_decay:g}: AdamW "
                             "multiplies each decayed weight by 1 - learning_rate x weight_decay at every step, "
                             "which at 1 or more zeroes or flips it; lower learning_rate or weight_decay (GPT-2's "
                             "recipes: 6e-4 and 0.1)")
        if self.preset not in PRESETS:  # (ignored beside init_from, but a name that is none is a mistake either way)
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.base_dtype is not None and (self.base_dtype not in BASE_DTYPES or not self.lora_rank):
            raise ValueError(f"base_dtype holds a frozen LoRA base: it needs lora_rank and one of {BASE_DTYPES}, got "
                             f"{self.base_dtype!r} with lora_rank {self.lora_rank}")
        if self.base_dtype is not None and self.precision != "float32":
            raise ValueError(f"base_dtype {self.base_dtype} is the model's dtype policy (its adapters stay float32): "
                             f"precision {self.precision} would be ignored; give one of the two")
        if self.lora_rank and not self.init_from:  # (it trained adapters on a random, frozen base)
            raise ValueError(f"lora_rank {self.lora_rank} adapts a trained model, whose weights stay frozen: give "
                             "init_from (--init-from) the model to adapt")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES[1:]}, got {self.strategy!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS[1:]}, got {self.distribution!r}")
        if self.strategy and (self.distribution or self.num_processes):
            raise ValueError("strategy (tf.distribute, TensorFlow) and distribution (keras.distribution, JAX) exclude "
                             "each other: choose one")
        if (self.mesh or self.num_processes or self.coordinator or self.process_id is not None) \
                and not self.distribution:
            raise ValueError("mesh and many processes need a distribution (data or model)")
        if self.mesh:
            Mesh.parse(self.mesh)
        if self.coordinator and not re.fullmatch(r"\S+:[0-9]+", self.coordinator):  # (JAX: an IndexError)
            raise ValueError(f"coordinator is process 0's host:port, got {self.coordinator!r}")
        self.check_samples_used(processes=1)
        if self.process_id is not None and not (self.num_processes or self.coordinator or any(
                os.environ.get(v) for v in CLUSTER_VARIABLES)):  # it would run alone, as process 0
            raise ValueError(f"process_id {self.process_id} names one process of many: give num_processes and the "
                             f"coordinator too (or {', '.join(CLUSTER_VARIABLES)})")
        if self.num_processes is not None and not 0 <= (self.process_id or 0) < self.num_processes:
            raise ValueError(f"process_id must be in [0, num_processes = {self.num_processes}), "
                             f"got {self.process_id!r}")
        if (self.eval_interval * self.grad_accum) % self.steps_per_execution:
            raise ValueError("eval_interval * grad_accum (micro-batches per round) must be a multiple of "
                             "steps_per_execution")
        if (self.steps % self.eval_interval * self.grad_accum) % self.steps_per_execution:
            raise ValueError(f"the last round ({self.steps % self.eval_interval} steps: steps % eval_interval) "
                             "times grad_accum must be a multiple of steps_per_execution")
