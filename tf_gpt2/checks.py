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

import contextlib
import inspect
import warnings
from collections.abc import Iterable
from typing import Any, Callable, Iterator

import keras
import numpy as np


def refuse_litert_of_any_length(input_signature: Any) -> None:
    """Refuse Keras' `export(format="litert")` of ids of unknown length on TensorFlow: Keras turns on TensorFlow
    (Flex) ops for them, which LiteRT's interpreter and LiteRT-LM do not run (the file fails only where it is run);
    an unknown batch alone writes none."""
    unknown = any(None in tuple(getattr(spec, "shape", ()) or ())[1:] for spec in keras.tree.flatten(input_signature))
    if unknown and keras.backend.backend() == "tensorflow":  # (on JAX, Keras says itself that it cannot)
        raise ValueError("format='litert' of ids of any length writes TensorFlow (Flex) ops, which LiteRT's "
                         "interpreter and LiteRT-LM do not run: for a phone, export with a KV cache "
                         "(tf_gpt2.litert.export_litert, or tf-gpt2 export --format tflite); for logits alone, give "
                         "one length: input_signature=[keras.InputSpec(shape=(None, T), dtype='int32')]")


def is_integer(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def scalar(value: Any) -> Any:
    """A 0-d array (numpy, JAX or TensorFlow: an argmax, a length) as the numpy scalar it holds, which `is_integer`
    and float checks take; anything else (a symbolic tensor too) as it is."""
    if hasattr(value, "__array__") and getattr(value, "shape", None) == ():
        try:
            return np.asarray(value)[()]
        except Exception:  # (a traced or symbolic tensor has no value to read)
            return value
    return value


def checked_integer(name: str, value: Any) -> int:
    """`value` as an int, refused by `name` where it is not an integer (a float, however whole, or a bool)."""
    value = scalar(value)
    if not is_integer(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def checked_stop_ids(stop_ids: Any, vocab_size: int) -> list[int]:
    """Stop ids, one id or a list of them, as ints in [0, vocab_size): one the model never writes would never stop."""
    stop_ids = scalar(stop_ids)  # (a numpy, JAX or TensorFlow scalar: an argmax)
    if is_integer(stop_ids):  # one id, as transformers' eos_token_id takes it
        stop_ids = [stop_ids]
    no_end = ("None is no stop id: a character model has no end-of-text token (its tokenizer's eot_id is "
              "None); give stop_ids=[] or ids of its characters")
    if stop_ids is None:
        raise ValueError(no_end)
    if isinstance(stop_ids, (str, bytes, bytearray, memoryview)) or not isinstance(stop_ids, Iterable):
        raise TypeError(f"stop_ids must be a token id or a list of them, got {stop_ids!r:.80}")
    stop_ids = list(stop_ids)
    if any(t is None for t in stop_ids):
        raise ValueError(no_end)
    stop_ids = [checked_integer("stop_ids entry", t) for t in stop_ids]
    if any(not 0 <= t < vocab_size for t in stop_ids):
        raise ValueError(f"stop_ids must be token ids in [0, {vocab_size}) (the model's vocabulary), got {stop_ids}")
    return stop_ids


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


def check_in_vocabulary(ids: Any, vocab_size: int, where: str = "") -> None:
    """Every id of `ids` (any shape, non-empty) in [0, vocab_size); `where` says where they came from."""
    ids = np.asarray(ids)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got min {ids.min()} and max {ids.max()}{where}")


def _shape(name: str, x: Any) -> tuple:
    """x's shape, each dimension an int or None (unknown: traced, or symbolic as in JAX's shape polymorphism)."""
    if getattr(getattr(x, "shape", None), "rank", 0) is None:
        raise ValueError(f"{name} must have a known rank (shape [batch, time])")
    return tuple(d if isinstance(d, (int, np.integer)) else None for d in (x.shape if hasattr(x, "shape") else
                                                                               np.shape(x)))


def check_integers(name: str, x: Any, bools: bool = False) -> None:
    """x holds integers (a tensor, an array, a list or a number): not floats, which would be truncated, nor bools
    unless `bools`."""
    dtype = keras.backend.standardize_dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    if "int" not in dtype and not (bools and dtype == "bool"):
        raise TypeError(f"{name} must be {'integers or bools' if bools else 'integers'}, got dtype {dtype}")


def check_aligned(name: str, x: Any, token_ids: Any) -> None:
    """x (position_ids; attention_mask, bools too) holds integers [batch or 1, time] (position_ids [time] too), one
    per token: broadcast over time, it would give every token the one value."""
    check_integers(name, x, bools=name == "attention_mask")
    shape, (batch, time) = _shape(name, x), _shape("token_ids", token_ids)
    if name == "position_ids" and len(shape) == 1:  # one row for every row of the batch
        shape = (1, *shape)
    if len(shape) != 2 or None not in (shape[1], time) and shape[1] != time or None not in (shape[0], batch) and \
            shape[0] not in (batch, 1):
        raise ValueError(f"{name} must have shape [batch, time] = {[batch, time]} as token_ids, got shape "
                         f"{list(_shape(name, x))}")


def check_positions(position_ids: Any, first_slot: Any, time: Any, n_positions: int, cache_length: int | None) -> None:
    """Known positions in [0, n_positions) (given, or by default `first_slot .. first_slot + time`), and a known
    cache write at `first_slot` inside the cache: the model itself would gather or write a clamped slot."""
    check_integers("cache_index", first_slot)
    first = known_values(first_slot)
    if position_ids is not None:
        positions = known_values(position_ids)
    else:
        positions = None if first is None or time is None else np.arange(time) + int(first)
    if positions is not None and positions.size and (positions.min() < 0 or positions.max() >= n_positions):
        raise ValueError(f"positions must be in [0, {n_positions}) (n_positions), got min {positions.min()} and "
                         f"max {positions.max()}")
    if cache_length is not None and first is not None and not 0 <= int(first) <= cache_length - time:
        raise ValueError(f"{time} tokens at cache slot {int(first)} do not fit in a cache of {cache_length}")


def check_token_ids(token_ids: Any, vocab_size: int, max_len: int) -> None:
    """Integer ids [batch, time], 1 <= time <= max_len, every known value in [0, vocab_size): a clear error
    instead of a failure deep inside the backend (or, compiled, a gather of another row)."""
    if isinstance(token_ids, dict) or (isinstance(token_ids, (tuple, list)) and
                                       any(len(getattr(item, "shape", ())) > 1 for item in token_ids)):
        # keras-hub's inputs, or (ids, mask)
        got = f"a dict of {list(token_ids)}" if isinstance(token_ids, dict) else \
            f"a {type(token_ids).__name__} of {len(token_ids)} arrays"
        raise TypeError(f"GPT2 takes the token ids [batch, time] as one array (attention_mask= and position_ids= as "
                        f"keywords), got {got}")
    check_integers("token_ids", token_ids)
    shape = _shape("token_ids", token_ids)
    if len(shape) != 2:
        raise ValueError(f"token_ids must have shape [batch, time], got shape {shape}")
    if 0 in shape:
        raise ValueError(f"token_ids is empty (shape {shape})")
    time = shape[1]
    if time is not None and time > max_len:
        raise ValueError(f"sequence length {time} exceeds the context of {max_len} positions (n_positions)")
    values = known_values(token_ids)
    if values is not None:
        check_in_vocabulary(values, vocab_size)


def _resolved(value: Any, get: Callable) -> Iterator[Any]:
    """Each loss or metric of `value` as Keras takes it (itself, by name or class, in a list or dict), resolved by
    `get`; a name Keras picks by shape ("crossentropy", "ce") as itself."""
    for each in keras.tree.flatten(value):
        if isinstance(each, str) and each.lower() in ("crossentropy", "ce"):
            yield each.lower()
        elif isinstance(each, (str, type)):
            with contextlib.suppress(ValueError, TypeError):  # not Keras' name: Keras says so at compile
                yield get(each)
        else:
            yield each


def _wraps(each: Any, functions: tuple) -> bool:
    """Whether a Keras loss or metric is, or wraps, one of `functions`."""
    return each in functions or getattr(each, "fn", getattr(each, "_fn", None)) in functions


def _reads_probabilities(each: Any) -> bool:
    """A Keras cross-entropy (or keras-hub's Perplexity) that takes probabilities: `from_logits=False`, what its
    names, classes and functions default to ("crossentropy" and "ce" pick the sparse one for token ids)."""
    functions = (keras.losses.sparse_categorical_crossentropy, keras.losses.categorical_crossentropy)
    settings = getattr(each, "_fn_kwargs", None) or {}  # (read, not serialized: a lambda's config may not be)
    return (each in ("crossentropy", "ce") or (_wraps(each, functions) and not settings.get("from_logits", False))
            or getattr(each, "from_logits", None) is False)  # keras-hub's Perplexity keeps its own


def check_optimizer_fits(model: keras.Model) -> None:
    """Refuse to train where the weights that train are not those the model's built optimizer holds state for (a
    layer frozen or unfrozen, or LoRA adapters enabled, since its first step): Keras fails inside the step, on JAX
    without saying why. TensorFlow's Keras trains a subset of them: freezing alone is refused on JAX only."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not optimizer.built:
        return
    built = {id(variable) for variable in optimizer._trainable_variables}
    new = [variable.path for variable in model.trainable_variables if id(variable) not in built]
    gone = len(built) - (len(model.trainable_variables) - len(new))
    if new or (gone and keras.backend.backend() == "jax"):
        changes = ([f"{_counted(len(new), 'weight')} that did not train now {'do' if len(new) > 1 else 'does'} (e.g. "
                    f"{new[0]})"] if new else []) + (
            [f"{_counted(gone, 'weight')} that trained no longer {'do' if gone > 1 else 'does'}"] if gone else [])
        raise ValueError(f"the model's optimizer holds state for the weights that trained when it was built; since "
                         f"then {' and '.join(changes)} (a layer frozen or unfrozen, enable_lora or quantize): compile "
                         "the model again with a new optimizer (its moments start afresh) before training it")


def _counted(n: int, noun: str) -> str:
    """ "1 weight", "2 weights"."""
    return f"{n} {noun}{'s' * (n != 1)}"


def check_losses_and_metrics(loss: Any, metrics: Any, weighted_metrics: Any) -> None:
    """Refuse, at `compile`, a loss or metric that does not fit a model of token logits: a binary cross-entropy (one
    yes/no per output), or a cross-entropy that reads probabilities. Over logits the loss would train a wrong
    objective, the metric report a wrong figure, without a word."""
    binary = (keras.losses.binary_crossentropy, keras.losses.binary_focal_crossentropy)
    for name, given, get in (("loss", loss, keras.losses.get), ("metrics", metrics, keras.metrics.get),
                             ("weighted_metrics", weighted_metrics, keras.metrics.get)):
        kinds = list(_resolved(given, get))
        if any(_wraps(each, binary) for each in kinds):
            raise ValueError(f"GPT2 predicts one of its vocabulary's tokens, and {name}={given!r} is a binary "
                             "cross-entropy (one yes or no per output): use keras.losses.SparseCategoricalCrossentropy"
                             "(from_logits=True) (for metrics, keras.metrics.SparseCategoricalCrossentropy(from_logits="
                             "True) or keras_hub.metrics.Perplexity(from_logits=True))")
        if any(_reads_probabilities(each) for each in kinds):
            fix = ("compile with loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)" if name == "loss"
                   else "pass from_logits=True to it (keras.metrics.SparseCategoricalCrossentropy(from_logits=True), "
                   "keras_hub.metrics.Perplexity(from_logits=True))")
            raise ValueError(f"GPT2 returns logits, and {name}={given!r} reads probabilities (from_logits=False): "
                             f"{fix}")


class CheckedLoops:
    """Keras' loops (`fit`, `evaluate`, `predict`, their `*_on_batch`) for a model of token ids (`config.vocab_size`,
    `config.n_positions`). They trace the model, where an id cannot be refused by its value (compiled, a gather reads
    another row without a sign): ids given as values, an array or a tensor, `fit`'s `validation_data` too, are checked
    first, and so are targets (ids wherever their sample weight is not 0: one outside the vocabulary trained to a NaN
    loss and weights, a float one was truncated). A tf.data pipeline, a generator or a PyDataset is read as Keras
    reads it."""

    def _bound(self, loop: str, args: tuple, kwargs: dict) -> dict:
        """The arguments of Keras' `loop` by name (by keyword or in their place)."""
        try:
            return inspect.signature(getattr(super(), loop)).bind_partial(*args, **kwargs).arguments
        except TypeError:  # arguments Keras' loop does not take: its own error follows
            return {}

    def _checked_data(self, loop: str, x, args: tuple, kwargs: dict):
        """`x`, checked, after the targets and `validation_data` of this call of Keras' `loop` are."""
        bound = self._bound(loop, (x, *args), kwargs)
        self._checked_targets(bound.get("y"), bound.get("sample_weight"))
        self._checked_pair(x, bound.get("y"))
        validation = bound.get("validation_data")
        if isinstance(validation, (tuple, list)) and validation:  # (Keras reads it after the first epoch's training)
            self._checked_ids(validation[0])
            self._checked_targets(*validation[1:3], named="validation_data's targets")
            self._checked_pair(validation[0], validation[1] if len(validation) > 1 else None,
                               named="validation_data's targets")
        return self._checked_ids(x)

    def _checked_pair(self, x, y, named: str = "targets (y)") -> None:
        """Ids given as an array, with targets that cannot be their next ids, to the model's own cross-entropy: none
        (Keras said "None values not supported"), of another shape (a broadcast error), or the ids themselves
        (Hugging Face's labels, which its models shift inside: a model that learns to copy its input, warned)."""
        if not getattr(self, "_own_cross_entropy", False) or isinstance(x, dict) or not hasattr(x, "shape"):
            return
        shifted = "each position's target is the id after it: fit(ids[:, :-1], ids[:, 1:])"
        if y is None:
            raise ValueError(f"{named} missing: GPT2 learns the next token, so {shifted}")
        ids, targets = known_values(x), known_values(y) if hasattr(y, "shape") else None
        if ids is None or targets is None or ids.ndim != 2:  # (ids of another rank: refused as ids, next)
            return
        if targets.shape[:2] != ids.shape[:2] or targets.ndim > 2 and targets.shape[2:] != (1,):
            raise ValueError(f"{named} of shape {targets.shape} for ids of shape {ids.shape}: {shifted}")
        if np.array_equal(targets.reshape(ids.shape), ids) and not np.array_equal(ids[:, 1:], ids[:, :-1]):
            warnings.warn(f"{named} equal the ids given (x): GPT2 would learn to copy its input, not to predict "
                          f"the next token; {shifted} (Hugging Face's models shift their labels inside; Keras' "
                          "fit does not)", stacklevel=4)

    def fit(self, x=None, *args, **kwargs):
        return super().fit(self._checked_data("fit", x, args, kwargs), *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        return super().evaluate(self._checked_data("evaluate", x, args, kwargs), *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        return super().predict(self._checked_ids(x), *args, **kwargs)

    def train_on_batch(self, x, *args, **kwargs):
        return super().train_on_batch(self._checked_data("train_on_batch", x, args, kwargs), *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        return super().test_on_batch(self._checked_data("test_on_batch", x, args, kwargs), *args, **kwargs)

    def predict_on_batch(self, x):
        return super().predict_on_batch(self._checked_ids(x))

    def _checked_ids(self, x):
        if isinstance(x, (tuple, list)):  # (rows of ids as arrays reached `call` one by one: a cryptic failure)
            raise TypeError(f"Keras' loops take a {type(x).__name__} as several inputs, and GPT2 takes the token ids "
                            "[batch, time] as one array: give np.array(ids)")
        if isinstance(x, dict) or hasattr(x, "shape"):
            check_token_ids(x, self.config.vocab_size, self.config.n_positions)
        return x

    def _checked_targets(self, y=None, sample_weight=None, named: str = "targets (y)") -> None:
        """Targets given as an array or a tensor to the model's own cross-entropy: integers, in the vocabulary wherever
        their weight is not 0 (a placeholder such as Hugging Face's -100 stands where its sample weight is 0). Another
        loss (`ignore_class`, soft targets, a function) reads them as it will."""
        targets = known_values(y) if hasattr(y, "shape") and getattr(self, "_own_cross_entropy", False) else None
        if targets is None:
            return
        check_integers(named, targets)
        if targets.size == 0 or (targets.min() >= 0 and targets.max() < self.config.vocab_size):
            return
        outside = (targets < 0) | (targets >= self.config.vocab_size)
        weights = known_values(sample_weight) if hasattr(sample_weight, "shape") else None
        if weights is not None:  # one per token, as the loss reads them ([batch, time] or [batch, time, 1])
            if np.size(weights) != targets.size:  # (the loss's own error follows)
                return
            outside &= np.reshape(weights, targets.shape) != 0
        if outside.any():
            raise ValueError(f"{named} must be token ids in [0, {self.config.vocab_size}) where their sample "
                             f"weight is not 0, got {sorted(set(targets[outside].tolist()))[:5]}: a placeholder "
                             "(Hugging Face's -100) needs a sample_weight of 0 there")
