"""XLA compilation of functions of a model, for the active Keras backend, built once per model and rebuilt when
the model changes under them.

Example:
>>> from tf_gpt2 import GPT2, GPT2Config
>>> model = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=50))
>>> def last_logits(model, ids):
...     return model(ids)[:, -1]
>>> tuple(compiled(model, last_logits)(np.array([[1, 2, 3]], np.int32)).shape)
(1, 50)
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any, Callable, Hashable

import keras
import numpy as np  # noqa: F401  (used by the example)


def program_key(model: keras.Layer) -> tuple:
    """What a program traced from `model` reads besides its weights' values: which variables it has and which of
    them train, and each layer's dtype policy and whether it trains. Quantizing, LoRA adapters, a rebuilt layer (new
    variables), a new dtype policy or a layer or variable frozen or unfrozen change it; loading other weights
    (`set_weights`, `load_weights`, `from_pretrained` into it) assigns values and does not.
    """
    return (tuple((id(v), v.trainable) for v in model.variables),
            tuple((id(layer), layer.dtype_policy.name, layer.trainable) for layer in model._flatten_layers()))


def changed(model: keras.Layer, name: Hashable) -> bool:
    """Whether `model`'s `program_key` differs from the one seen at the last call with `name` (True at the first)."""
    seen = model.__dict__.setdefault("_tf_gpt2_program_keys", {})  # __dict__: kept out of Keras' tracking
    key, held = program_key(model), seen.get(name)
    if held is not None and held[0] == key and all(ref() is not None for ref in held[1]):
        return False  # (a variable or layer that is gone could have left its id to a new one: changed)
    if held is not None:  # every program traced from the model is stale, and holds the variables it read
        seen.clear()
        model.__dict__.get("_tf_gpt2_compiled", {}).clear()
    seen[name] = (key, [weakref.ref(part) for part in (*model.variables, *model._flatten_layers())])
    return True


_PROGRAMS = itertools.count()


def _compile(model, fn):
    """XLA-compile fn(model, *tensors) for the active backend, reading the model's live weights."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # autograph=False, as Keras' own steps and exports: the loops are ops.while_loop already, and converting
        # each function's source took longer than tracing it (2.5 of a 9 s `tf-gpt2 generate` on a tiny model).
        program = tf.function(lambda *args: fn(model, *args), jit_compile=True, autograph=False)
        # Each shape is a program of its own by design, and TensorFlow counts every trace of this lambda's code as
        # one function's: a fifth prompt length of `generate` logged "triggered tf.function retracing", blaming
        # the caller's loop. Its switch for that warning, per function:
        program._omit_frequent_tracing_warning = True
        return program
    if backend == "jax":
        import jax

        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
                return fn(model, *args)

        # A static number of its own: JAX caches traces by function, and a freed program's function can leave its
        # identity to a new one, whose trace (of the model as it was) JAX would then reuse.
        jitted, number = jax.jit(lambda number, *args: stateless(*args), static_argnums=0), next(_PROGRAMS)
        return lambda *args: jitted(number, [v.value for v in model.variables], *args)
    return lambda *args: fn(model, *args)


def compiled(model, fn: Callable[..., Any]) -> Callable[..., Any]:
    """The compiled version of `fn` for `model`: built once, kept on the model, and built again when the model
    changed since (`program_key`), so a call after `quantize` or `enable_lora` runs the model as it is now.

    `fn` is traced as written, without autograph: its loops and branches on tensors are `ops.while_loop` and
    `ops.cond`."""
    programs = model.__dict__.setdefault("_tf_gpt2_compiled", {})
    if changed(model, fn) or fn not in programs:  # keyed by the function itself: two of one name are two programs
        programs[fn] = _compile(model, fn)
    return programs[fn]
