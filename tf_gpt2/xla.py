"""XLA compilation of functions of a model, for the active Keras backend, built once per model.

Example:
>>> from tf_gpt2 import GPT2, GPT2Config
>>> model = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=50))
>>> def last_logits(model, ids):
...     return model(ids)[:, -1]
>>> tuple(compiled(model, last_logits)(np.array([[1, 2, 3]], np.int32)).shape)
(1, 50)
"""

from __future__ import annotations

import keras
import numpy as np  # noqa: F401  (used by the example)


def _compile(model, fn):
    """XLA-compile fn(model, *tensors) for the active backend, reading the model's live weights."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda *args: fn(model, *args), jit_compile=True)
    if backend == "jax":
        import jax

        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
                return fn(model, *args)

        jitted = jax.jit(stateless)
        return lambda *args: jitted([v.value for v in model.variables], *args)
    return lambda *args: fn(model, *args)


def compiled(model, fn):
    """The compiled version of `fn` for `model`, built once and kept on the model."""
    cache = model.__dict__.setdefault("_tf_gpt2_compiled", {})
    if fn not in cache:  # keyed by the function itself: two functions of one name are two programs
        cache[fn] = _compile(model, fn)
    return cache[fn]
