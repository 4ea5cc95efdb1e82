"""Text generation with a fixed-shape KV cache, compiled once per shape bucket with XLA.

The prompt runs once ("prefill") and fills the cache; each new token then costs one
single-position forward pass ("decode") that attends over the cache. The whole loop is
one compiled function. Prompt lengths and token budgets are rounded up to powers of two,
so a new prompt length does not recompile; sampling knobs are tensors, so changing
them does not either. Prompts of different lengths are left-padded and masked.

Sampling noise comes from a counter-based integer hash instead of a backend RNG, so a
seed gives the same tokens on TensorFlow, on JAX, and inside an exported SavedModel.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import keras
import numpy as np
from keras import ops

from tf_gpt2.tokenizer import EOT_ID


def _bucket(n: int, minimum: int = 8) -> int:
    return max(minimum, 1 << (int(n) - 1).bit_length())


def _hash_uniform(rows, cols, seed, step):
    """Uniform (0, 1) floats [rows, cols] from a stateless integer hash (lowbias32) of (seed, step, index)."""
    arange = lambda n: ops.cast(ops.arange(n, dtype="int32"), "uint32")  # noqa: E731
    index = arange(rows)[:, None] * ops.cast(cols, "uint32") + arange(cols)[None, :]
    x = index + ops.cast(step, "uint32") * ops.cast(rows * cols, "uint32")
    x = ops.bitwise_xor(x, ops.cast(seed, "uint32") * ops.cast(0x9E3779B9, "uint32"))
    for multiplier in (0x7FEB352D, 0x846CA68B):
        x = ops.bitwise_xor(x, ops.right_shift(x, ops.cast(16, "uint32")))
        x = x * ops.cast(multiplier, "uint32")
    x = ops.bitwise_xor(x, ops.right_shift(x, ops.cast(16, "uint32")))
    top24 = ops.cast(ops.right_shift(x, ops.cast(8, "uint32")), "float32")
    return (top24 + 0.5) / float(1 << 24)


def filter_top_k_top_p(logits, top_k, top_p):
    """Set to -inf every logit outside the top-k and outside the nucleus of mass top_p.

    `top_k` <= 0 and `top_p` >= 1 disable each filter; both may be tensors.
    """
    vocab = ops.shape(logits)[-1]
    sorted_desc = -ops.sort(-logits, axis=-1)
    k = ops.where(top_k > 0, ops.minimum(top_k, vocab), vocab)
    kth_largest = ops.take_along_axis(sorted_desc, ops.zeros_like(sorted_desc[:, :1], "int32") + k - 1, axis=-1)
    probs = ops.softmax(sorted_desc, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
    in_nucleus = (ops.cumsum(probs, axis=-1) - probs) < top_p
    nucleus_min = ops.min(ops.where(in_nucleus, sorted_desc, np.inf), axis=-1, keepdims=True)
    threshold = ops.maximum(kth_largest, nucleus_min)
    return ops.where(logits >= threshold, logits, -np.inf)


def apply_repetition_penalty(logits, seen, penalty):
    """CTRL's penalty: logits of tokens already in the text are divided (if > 0) or multiplied by it."""
    penalized = ops.where(logits > 0, logits / penalty, logits * penalty)
    return ops.where(seen, penalized, logits)


def sample_next(logits, temperature, top_k, top_p, seed, step):
    """Next token ids [batch]: argmax when temperature == 0, else a filtered sample."""

    def sampled():
        scaled = logits / ops.maximum(temperature, 1e-6)
        filtered = ops.cond(
            ops.logical_or(top_k > 0, top_p < 1.0),
            lambda: filter_top_k_top_p(scaled, top_k, top_p),
            lambda: scaled,
        )
        gumbel = -ops.log(-ops.log(_hash_uniform(*ops.shape(logits), seed, step)))
        return ops.cast(ops.argmax(filtered + gumbel, axis=-1), "int32")

    greedy = lambda: ops.cast(ops.argmax(logits, axis=-1), "int32")  # noqa: E731
    return ops.cond(temperature > 0, sampled, greedy)


def _tokens_seen(ids, mask, vocab):
    """Bool [batch, vocab]: which tokens occur (unmasked) in each row of ids."""
    batch, time = ops.shape(ids)[0], ops.shape(ids)[1]
    rows = ops.broadcast_to(ops.arange(batch, dtype="int32")[:, None], (batch, time))
    cols = ops.where(mask > 0, ids, vocab)  # padding goes to a spare column, dropped below
    index = ops.reshape(ops.stack([rows, cols], axis=-1), (-1, 2))
    seen = ops.scatter_update(ops.zeros((batch, vocab + 1), "int32"), index, ops.ones((batch * time,), "int32"))
    return seen[:, :vocab] > 0


def prefill(model, prompt_ids, prompt_mask, new_slots):
    """Run the left-padded prompt once and fill a KV cache with room for `new_slots.shape[1]` tokens.

    Returns the decoding state: (last logits [batch, vocab], cache, mask over the whole cache,
    prompt lengths, tokens seen so far [batch, vocab]).
    """
    batch, budget = ops.shape(prompt_ids)[0], ops.shape(new_slots)[1]
    mask = ops.concatenate([prompt_mask, ops.ones((batch, budget), "int32")], axis=1)
    positions = ops.maximum(ops.cumsum(prompt_mask, axis=1) - 1, 0)
    cache = model.init_cache(batch, ops.shape(prompt_ids)[1] + budget)
    last = ops.shape(prompt_ids)[1] - 1  # prompts are left-padded: every row ends at the last column
    logits, cache = model.call_with_cache(prompt_ids, cache, 0, mask, positions, logits_at=last)
    seen = _tokens_seen(prompt_ids, prompt_mask, model.config.vocab_size)
    return logits, cache, mask, ops.sum(prompt_mask, axis=1), seen


def decode_step(model, i, done, logits, cache, seen, mask, lengths, prompt_len,
                temperature, top_k, top_p, repetition_penalty, seed, stop_ids, pad_id):
    """Choose token i of every row, then run it through the model at cache slot prompt_len + i.

    Rows already `done` get `pad_id`. Returns (token, done, logits, cache, seen).
    """
    batch = ops.shape(logits)[0]
    next_logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    token = sample_next(next_logits, temperature, top_k, top_p, seed, i)
    token = ops.where(done, pad_id, ops.reshape(token, (batch,)))  # cond drops the static shape
    done = ops.logical_or(done, ops.any(token[:, None] == stop_ids[None, :], axis=1))
    seen = ops.logical_or(seen, ops.one_hot(token, model.config.vocab_size) > 0)
    logits, cache = model.call_with_cache(token[:, None], cache, prompt_len + i, mask, (lengths + i)[:, None],
                                          logits_at=0)
    return token, done, logits, cache, seen


def generate_loop(model, prompt_ids, prompt_mask, new_slots, max_new_tokens, *knobs):
    """Prefill, then decode until `max_new_tokens` or every row stopped: one compiled function.

    `prompt_ids`/`prompt_mask` are int32 [batch, prompt_len], left-padded; `new_slots` is any
    [batch, budget] tensor whose shape fixes the output buffer; `knobs` are decode_step's
    (temperature, top_k, top_p, repetition_penalty, seed, stop_ids, pad_id).
    Returns int32 [batch, budget].
    """
    batch, prompt_len = ops.shape(prompt_ids)[0], ops.shape(prompt_ids)[1]
    logits, cache, mask, lengths, seen = prefill(model, prompt_ids, prompt_mask, new_slots)

    def keep_going(i, done, logits, cache, out, seen):
        return ops.logical_and(i < max_new_tokens, ops.logical_not(ops.all(done)))

    def step(i, done, logits, cache, out, seen):
        token, done, logits, cache, seen = decode_step(
            model, i, done, logits, cache, seen, mask, lengths, prompt_len, *knobs)
        out = ops.slice_update(out, (ops.zeros((), "int32"), i), token[:, None])
        return i + 1, done, logits, cache, out, seen

    pad_id = knobs[-1]
    state = (ops.zeros((), "int32"), ops.zeros((batch,), "bool"), logits, cache,
             ops.full((batch, ops.shape(new_slots)[1]), pad_id, "int32"), seen)
    return ops.while_loop(keep_going, step, state)[4]


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
    if fn.__name__ not in cache:
        cache[fn.__name__] = _compile(model, fn)
    return cache[fn.__name__]


def _as_batch(prompt: Any, tokenizer) -> tuple[list[list[int]], str]:
    """Normalise a prompt to a batch of id lists, and remember the form to answer in."""
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)], "text"
    if isinstance(prompt, (bytes, bytearray)) or (isinstance(prompt, (list, tuple)) and
                                                  any(isinstance(p, (bytes, bytearray)) for p in prompt)):
        raise TypeError("prompt is bytes: decode it to str first (or pass token ids as a list of int)")
    if isinstance(prompt, np.ndarray):
        prompt = prompt.tolist()
    if isinstance(prompt, Sequence) and len(prompt) == 0:
        raise ValueError("prompt is empty: give at least one token")
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) for p in prompt):
        return [tokenizer.encode(p) for p in prompt], "texts"
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, (int, np.integer)) for p in prompt):
        return [[int(t) for t in prompt]], "ids"
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, (Sequence, np.ndarray)) for p in prompt):
        batch = [list(p) for p in prompt]
        if not all(isinstance(t, (int, np.integer)) for p in batch for t in p):
            raise TypeError("token ids must be integers")
        return [[int(t) for t in p] for p in batch], "batch"
    raise TypeError(f"prompt must be text, a list of token ids or a batch of them, got {prompt!r:.80}")


def _real(name: str, value: Any) -> float:
    """A finite real number (NaN and infinity refused), for a sampling setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _seed(seed: Any) -> np.int32:
    if not 0 <= _integer("seed", seed) < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    return np.int32(seed)


def _prepare(model, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop_ids, tokenizer):
    """Check every argument and build the left-padded prompt batch the compiled code takes."""
    cfg = model.config
    has_text = isinstance(prompt, str) or (isinstance(prompt, list) and any(isinstance(p, str) for p in prompt))
    if tokenizer is None and has_text:
        from tf_gpt2.tokenizer import GPT2Tokenizer

        tokenizer = GPT2Tokenizer()
    batch, form = _as_batch(prompt, tokenizer)
    if any(len(p) == 0 for p in batch):
        raise ValueError("prompt is empty: give at least one token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    longest = max(len(p) for p in batch)
    if longest + max_new_tokens > cfg.n_positions:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the context of "
            f"{cfg.n_positions} positions"
        )
    temperature, top_p, repetition_penalty = (_real(n, v) for n, v in (
        ("temperature", temperature), ("top_p", top_p), ("repetition_penalty", repetition_penalty)))
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if _integer("top_k", top_k) < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0 < repetition_penalty < np.inf:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    flat = [t for p in batch for t in p]
    if min(flat) < 0 or max(flat) >= cfg.vocab_size:
        raise ValueError(f"token ids must be in [0, {cfg.vocab_size}), got min {min(flat)} and max {max(flat)}")
    stop_ids = [EOT_ID] if stop_ids is None else [_integer("stop_ids entry", t) for t in stop_ids]
    pad_id = EOT_ID if EOT_ID < cfg.vocab_size else 0

    width = min(_bucket(longest), cfg.n_positions)
    ids = np.full((len(batch), width), pad_id, np.int32)
    mask = np.zeros((len(batch), width), np.int32)
    for row, p in enumerate(batch):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    new_slots = np.zeros((len(batch), _bucket(max_new_tokens)), np.int32)
    knobs = (np.float32(temperature), np.int32(top_k), np.float32(top_p), np.float32(repetition_penalty),
             np.array(stop_ids + [-1], np.int32), np.int32(pad_id))
    return ids, mask, new_slots, knobs, stop_ids, form, tokenizer


def generate(
    model,
    prompt: Any,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop_ids: Sequence[int] | None = None,
    seed: int = 0,
    tokenizer=None,
) -> Any:
    """Continue `prompt` with up to `max_new_tokens` tokens.

    `prompt` is text (returns the continuation text), a list of texts, a list of token ids
    (returns new ids), or a batch of id lists of any lengths (returns a list of id lists).
    temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off. Generation of a
    row stops after a token in `stop_ids` (default: `<|endoftext|>`), which is kept in the ids
    and dropped from returned text.

    Example:
    >>> from tf_gpt2 import GPT2, GPT2Config
    >>> model = GPT2(GPT2Config.from_preset("gpt2-tiny"))
    >>> len(model.generate([464, 3290], max_new_tokens=5, stop_ids=[]))
    5
    """
    ids, mask, new_slots, knobs, stop_ids, form, tokenizer = _prepare(
        model, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop_ids, tokenizer)
    temperature_, top_k_, top_p_, penalty_, stops, pad_id = knobs
    out = compiled(model, generate_loop)(
        ids, mask, new_slots, np.int32(max_new_tokens), temperature_, top_k_, top_p_, penalty_,
        _seed(seed), stops, pad_id,
    )
    rows = []
    for row in ops.convert_to_numpy(out)[:, :max_new_tokens].tolist():
        ends = [i for i, t in enumerate(row) if t in stop_ids]
        rows.append(row[: ends[0] + 1] if ends else row)
    if form in ("ids", "batch"):
        return rows[0] if form == "ids" else rows
    texts = [tokenizer.decode([t for t in r if t not in stop_ids]) for r in rows]
    return texts[0] if form == "text" else texts


def stream(
    model,
    prompt: Any,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop_ids: Sequence[int] | None = None,
    seed: int = 0,
    tokenizer=None,
) -> Iterator[int]:
    """Yield the new token ids of one prompt as they are chosen (same tokens as `generate`).

    Prefill and each decode step are compiled once per shape bucket; Python only loops.
    """
    ids, mask, new_slots, knobs, stop_ids, _, _ = _prepare(
        model, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop_ids, tokenizer)
    if len(ids) != 1:
        raise ValueError("stream takes a single prompt")
    temperature_, top_k_, top_p_, penalty_, stops, pad_id = knobs
    seed_ = _seed(seed)
    logits, cache, full_mask, lengths, seen = compiled(model, prefill)(ids, mask, new_slots)
    done = np.zeros((1,), bool)
    step = compiled(model, decode_step)
    for i in range(max_new_tokens):
        token, done, logits, cache, seen = step(
            np.int32(i), done, logits, cache, seen, full_mask, lengths, np.int32(ids.shape[1]),
            temperature_, top_k_, top_p_, penalty_, seed_, stops, pad_id)
        token = int(ops.convert_to_numpy(token)[0])
        yield token
        if token in stop_ids:
            return
