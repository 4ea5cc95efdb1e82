"""Checks where untrusted values enter the package (arguments, settings, token ids), so that the model itself is
only the math.

>>> is_integer(3), is_integer(np.int32(3)), is_integer(True), is_integer(3.0)
(True, True, False, False)
>>> check_token_ids(np.array([[1, 2, 50]]), vocab_size=50, max_len=8)
Traceback (most recent call last):
...
ValueError: token ids must be in [0, 50), got min 1 and max 50
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


def is_integer(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def require_tensorflow(what: str) -> None:
    """Refuse `what` (an export: TensorFlow graphs) on another Keras backend, before anything is traced."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(f"{what} writes TensorFlow graphs: run it with KERAS_BACKEND=tensorflow (this process runs "
                           f"Keras on {backend}; a model trained there loads on TensorFlow from its .keras file)")


def known_values(x: Any) -> np.ndarray | None:
    """x as numpy when its values are known now; None inside a traced (compiled) function."""
    if isinstance(x, np.ndarray):
        return x
    if keras.backend.is_keras_tensor(x):
        return None
    try:
        return keras.ops.convert_to_numpy(x)
    except Exception:  # a symbolic tf.Tensor or a jax tracer: values are not known yet
        return None


def check_in_vocabulary(ids: Any, vocab_size: int) -> None:
    """Every id of `ids` (any shape, non-empty) in [0, vocab_size)."""
    ids = np.asarray(ids)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got min {ids.min()} and max {ids.max()}")


def check_positions(position_ids: Any, first_slot: Any, time: Any, n_positions: int, cache_length: int | None) -> None:
    """Known positions in [0, n_positions), and a known cache write `first_slot .. first_slot + time` inside the
    cache: the model itself would gather or write a clamped slot."""
    positions = None if position_ids is None else known_values(position_ids)
    if positions is not None and positions.size and (positions.min() < 0 or positions.max() >= n_positions):
        raise ValueError(f"positions must be in [0, {n_positions}) (n_positions), got min {positions.min()} and "
                         f"max {positions.max()}")
    first = None if cache_length is None else known_values(first_slot)
    if first is not None and not 0 <= int(first) <= cache_length - time:
        raise ValueError(f"{time} tokens at cache slot {int(first)} do not fit in a cache of {cache_length}")


def check_token_ids(token_ids: Any, vocab_size: int, max_len: int) -> None:
    """Integer ids [batch, time], 1 <= time <= max_len, every known value in [0, vocab_size): a clear error
    instead of a failure deep inside the backend (or, compiled, a gather of another row)."""
    dtype = keras.backend.standardize_dtype(token_ids.dtype)
    if "int" not in dtype:
        raise TypeError(f"token_ids must be integers, got dtype {dtype}")
    if len(token_ids.shape) != 2:
        raise ValueError(f"token_ids must have shape [batch, time], got shape {tuple(token_ids.shape)}")
    if 0 in token_ids.shape:
        raise ValueError(f"token_ids is empty (shape {tuple(token_ids.shape)})")
    time = token_ids.shape[1]
    if time is not None and time > max_len:
        raise ValueError(f"sequence length {time} exceeds the context of {max_len} positions (n_positions)")
    values = known_values(token_ids)
    if values is not None:
        check_in_vocabulary(values, vocab_size)
