"""Text generation with a fixed-shape KV cache, compiled once per shape bucket with XLA.

The prompt runs once ("prefill") and fills the cache; each new token then costs one
single-position forward pass ("decode") that attends over the cache. The whole loop is
one compiled function. Prompt lengths and token budgets are rounded up to powers of two,
so a new prompt length does not recompile; sampling settings are tensors, so changing
them does not either. Prompts of different lengths are left-padded and masked.

Sampling noise comes from a counter-based integer hash instead of a backend RNG, so a
seed gives the same tokens on TensorFlow, on JAX, and inside an exported SavedModel.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
from keras import ops

from tf_gpt2.checks import check_in_vocabulary, checked_integer, checked_stop_ids, is_integer, scalar
from tf_gpt2.layers import causal_mask
from tf_gpt2.tokenizer import CharacterTokenizer, GPT2Tokenizer, end_of_text_id, tokenizer_for
from tf_gpt2.xla import compiled


def _bucket(n: int, minimum: int = 8) -> int:
    return max(minimum, 1 << (int(n) - 1).bit_length())


def _hash_uniform(cols, seed, step):
    """Uniform (0, 1) floats [batch, cols] from a stateless integer hash (lowbias32) of (seed, step, column).

    `seed` is int32 [batch]: a row's noise depends on its own seed only, not on the rows beside it.
    """
    column = ops.cast(ops.arange(cols, dtype="int32"), "uint32")[None, :]
    x = column + ops.cast(step, "uint32") * ops.cast(cols, "uint32")
    x = ops.bitwise_xor(x, ops.cast(seed, "uint32")[:, None] * ops.cast(0x9E3779B9, "uint32"))
    for multiplier in (0x7FEB352D, 0x846CA68B):
        x = ops.bitwise_xor(x, ops.right_shift(x, ops.cast(16, "uint32")))
        x = x * ops.cast(multiplier, "uint32")
    x = ops.bitwise_xor(x, ops.right_shift(x, ops.cast(16, "uint32")))
    top24 = ops.cast(ops.right_shift(x, ops.cast(8, "uint32")), "float32")
    # (2**24 - 1) + 0.5 rounds to 2**24 in float32: without the bound, u = 1 and its Gumbel noise is +inf.
    return ops.minimum((top24 + 0.5) / float(1 << 24), 1.0 - 2.0**-24)


def filter_top_k_top_p(logits, top_k, top_p):
    """Set to -inf every logit outside the top-k, then outside the nucleus of mass top_p of what is left.

    The nucleus is taken on the top-k distribution renormalised (as Hugging Face does); a logit tied with the last
    one kept is kept too (Hugging Face's top-k keeps ties as well, its top-p as its sort orders them);
    `top_k` <= 0 and `top_p` >= 1 disable each filter; both may be tensors ([batch, 1] for one per row).
    """
    vocab = ops.shape(logits)[-1]
    sorted_desc = -ops.sort(-logits, axis=-1)
    k = ops.where(top_k > 0, ops.minimum(top_k, vocab), vocab)
    in_top_k = ops.arange(vocab, dtype="int32")[None, :] < k
    probs = ops.softmax(ops.where(in_top_k, sorted_desc, -np.inf), axis=-1)  # renormalised over the top k
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
    keep = ops.logical_and(in_top_k, ops.logical_or((ops.cumsum(probs, axis=-1) - probs) < top_p, top_p >= 1))
    threshold = ops.min(ops.where(keep, sorted_desc, np.inf), axis=-1, keepdims=True)
    return ops.where(logits >= threshold, logits, -np.inf)


def apply_repetition_penalty(logits, seen, penalty):
    """CTRL's penalty: logits of tokens already in the text are divided (if > 0) or multiplied by it."""
    penalized = ops.where(logits > 0, logits / penalty, logits * penalty)
    return ops.where(seen, penalized, logits)


class Sampling(NamedTuple):
    """How each row's next token is chosen and when the row stops. Every field is a tensor, so new values
    never recompile; the per-row ones are [batch], so rows of one batch may differ."""

    temperature: Any  # float32 [batch]; 0 = greedy
    top_k: Any  # int32 [batch]; 0 = off
    top_p: Any  # float32 [batch]; 1 = off
    repetition_penalty: Any  # float32 [batch]; 1 = off
    seed: Any  # int32 [batch]
    max_new_tokens: Any  # int32 [batch]: a row stops after this many new tokens
    stop_ids: Any  # int32 [n]: a row stops after one of these (-1: an unused entry)
    pad_id: Any  # int32: what a row gets after it stopped
    vocab_end: Any  # int32: ids from this one on are never chosen (a vocabulary wider than its text tokenizer's)


class Prompt(NamedTuple):
    """A batch of prompts, left-padded so that every row ends at the last column."""

    ids: Any  # int32 [batch, time]
    mask: Any  # int32 [batch, time]: 1 for tokens, 0 for padding


class DecodeState(NamedTuple):
    """Everything that changes from one decoding step to the next (fixed shapes throughout)."""

    step: Any  # int32: index of the next new token
    done: Any  # bool [batch]: rows that stopped
    logits: Any  # float32 [batch, vocab]: predict the next token
    cache: Any  # one {"key", "value"} per layer, [batch, n_head, prompt_len + budget, head_dim]
    seen: Any  # bool [batch, vocab]: tokens in each row so far (for the repetition penalty)
    tokens: Any  # int32 [batch, budget]: the new tokens, pad_id where none yet
    finite: Any  # bool [batch]: rows whose logits were finite (no NaN, no inf) at every token chosen so far
    mask: Any  # int32 [batch, prompt_len + budget]: which cache slots hold tokens (constant)
    lengths: Any  # int32 [batch]: prompt tokens per row (constant)


def _choosable(logits, sampling: Sampling):
    """Bool [1, vocab]: the ids a token may be chosen from (below `sampling.vocab_end`)."""
    return ops.arange(ops.shape(logits)[-1], dtype="int32")[None, :] < sampling.vocab_end


def _choosable_finite(logits, sampling: Sampling):
    """Bool [batch]: every logit a token could be chosen by is finite."""
    return ops.all(ops.logical_or(ops.isfinite(logits), ops.logical_not(_choosable(logits, sampling))), axis=-1)


def sample_next(logits, sampling: Sampling, step):
    """Next token ids [batch]: argmax in rows whose temperature is 0, a filtered sample in the others; never an id
    from `sampling.vocab_end` on."""
    logits = ops.where(_choosable(logits, sampling), logits, -np.inf)
    greedy = ops.cast(ops.argmax(logits, axis=-1), "int32")
    row = lambda setting: setting[:, None]  # noqa: E731  (a per-row setting against [batch, vocab])

    def sampled():
        # The largest logit at 0 first: a temperature near 0 sends the others to -inf, not the largest to +inf (a tie)
        temperature = ops.where(row(sampling.temperature) > 0, row(sampling.temperature), 1.0)
        scaled = (logits - ops.max(logits, axis=-1, keepdims=True)) / temperature
        filtered = ops.cond(  # sorting the vocabulary is skipped when no row filters
            ops.any(ops.logical_or(sampling.top_k > 0, sampling.top_p < 1.0)),
            lambda: filter_top_k_top_p(scaled, row(sampling.top_k), row(sampling.top_p)),
            lambda: scaled,
        )
        gumbel = -ops.log(-ops.log(_hash_uniform(ops.shape(logits)[1], sampling.seed, step)))
        return ops.cast(ops.argmax(filtered + gumbel, axis=-1), "int32")

    chosen = ops.cond(ops.any(sampling.temperature > 0), sampled, lambda: greedy)
    return ops.where(sampling.temperature > 0, ops.reshape(chosen, ops.shape(greedy)), greedy)


def positions_from_mask(mask):
    """Position ids of (left- or right-) padded rows: each token's index among its row's tokens."""
    return ops.maximum(ops.cumsum(mask, axis=1) - 1, 0)


def pad_id(config) -> int:
    """The id that pads prompts and stopped rows: `<|endoftext|>` where the model's ids are GPT-2's, else 0."""
    end = end_of_text_id(config)
    return 0 if end is None else end


def default_stop_ids(config) -> list[int]:
    """Where a row stops unless told: after `<|endoftext|>` where the model's ids are GPT-2's; a character model's
    rows never stop early."""
    end = end_of_text_id(config)
    return [] if end is None else [end]


def _tokens_seen(ids, mask, vocab):
    """Bool [batch, vocab]: which tokens occur (unmasked) in each row of ids."""
    batch, time = ops.shape(ids)[0], ops.shape(ids)[1]
    rows = ops.broadcast_to(ops.arange(batch, dtype="int32")[:, None], (batch, time))
    cols = ops.where(mask > 0, ids, vocab)  # padding goes to a spare column, dropped below
    index = ops.reshape(ops.stack([rows, cols], axis=-1), (-1, 2))
    seen = ops.scatter_update(ops.zeros((batch, vocab + 1), "int32"), index, ops.ones((batch * time,), "int32"))
    return seen[:, :vocab] > 0


def prefill(model, prompt: Prompt, new_slots) -> DecodeState:
    """Run the prompt once, filling a KV cache with room for `new_slots.shape[1]` new tokens."""
    batch, time, budget = ops.shape(prompt.ids)[0], ops.shape(prompt.ids)[1], ops.shape(new_slots)[1]
    mask = ops.concatenate([prompt.mask, ops.ones((batch, budget), "int32")], axis=1)
    cache = model.init_cache(batch, time + budget)
    logits, cache = model.call_with_cache(prompt.ids, cache, 0, causal_mask(time, time + budget, 0, mask),
                                          positions_from_mask(prompt.mask),
                                          logits_at=time - 1)  # left-padded: every row ends at the last column
    return DecodeState(
        step=ops.zeros((), "int32"), done=ops.zeros((batch,), "bool"), logits=logits, cache=cache,
        seen=_tokens_seen(prompt.ids, prompt.mask, model.config.vocab_size),
        tokens=ops.zeros((batch, budget), "int32"), finite=ops.ones((batch,), "bool"), mask=mask,
        lengths=ops.sum(prompt.mask, axis=1),
    )


def decode_step(model, state: DecodeState, sampling: Sampling) -> DecodeState:
    """Choose new token `state.step` of every row (pad_id for rows already done), then run it
    through the model at its cache slot."""
    budget = ops.shape(state.tokens)[1]
    penalized = ops.any(sampling.repetition_penalty != 1.0)  # else the [batch, vocab] passes below are skipped
    logits = ops.cond(penalized, lambda: apply_repetition_penalty(state.logits, state.seen,
                                                                  sampling.repetition_penalty[:, None]),
                      lambda: state.logits)
    token = ops.where(state.done, sampling.pad_id, sample_next(logits, sampling, state.step))
    slot = ops.shape(state.mask)[1] - budget + state.step  # the cache slot after the prompt's
    # A row that is done keeps running with the others (its tokens are pad_id); position 0 keeps it inside the
    # context while a longer row of the batch goes on.
    position = ops.where(state.done, 0, state.lengths + state.step)
    logits, cache = model.call_with_cache(token[:, None], state.cache, slot,
                                          causal_mask(1, ops.shape(state.mask)[1], slot, state.mask),
                                          position[:, None], logits_at=0)
    return state._replace(
        step=state.step + 1,
        done=ops.any(ops.stack([state.done, _is_stop(token, sampling.stop_ids),
                                state.step + 1 >= sampling.max_new_tokens]), axis=0),
        logits=logits, cache=cache,
        seen=ops.cond(penalized, lambda: ops.logical_or(state.seen, ops.one_hot(token, model.config.vocab_size) > 0),
                      lambda: state.seen),
        # A select, not a slice update: this runs without XLA too (a served SavedModel).
        tokens=ops.where(ops.arange(budget, dtype="int32")[None, :] == state.step, token[:, None], state.tokens),
        finite=ops.logical_and(state.finite, ops.logical_or(state.done, _choosable_finite(state.logits, sampling))),
    )


def _is_stop(tokens, stop_ids):
    """Bool, shaped like `tokens`: which of them are stop ids."""
    return ops.any(tokens[..., None] == stop_ids, axis=-1)


def answer_lengths(tokens, sampling: Sampling):
    """How many of each row's new `tokens` [batch, budget] are its answer: up to and with its first stop id,
    at most its max_new_tokens. Int32 [batch]."""
    stops = _is_stop(tokens, sampling.stop_ids)
    first_stop = ops.where(ops.any(stops, axis=1), ops.argmax(ops.cast(stops, "int32"), axis=1) + 1,
                           ops.shape(tokens)[1])
    return ops.cast(ops.minimum(first_stop, sampling.max_new_tokens), "int32")


def generate_loop(model, prompt: Prompt, new_slots, sampling: Sampling):
    """Prefill, then decode until every row stopped (a stop id, or its max_new_tokens): one compiled function.

    `new_slots` is any [batch, budget] tensor; its shape fixes the output. Returns the new tokens, int32
    [batch, budget], and which rows chose them from finite logits, bool [batch] (a broken model's NaN or inf
    logits would otherwise pass for a choice).
    """
    start = prefill(model, prompt, new_slots)
    start = start._replace(tokens=ops.full(ops.shape(start.tokens), sampling.pad_id, "int32"))

    def keep_going(*state):
        state = DecodeState(*state)
        return ops.logical_not(ops.all(state.done))

    def step(*state):
        return tuple(decode_step(model, DecodeState(*state), sampling))

    end = DecodeState(*ops.while_loop(keep_going, step, tuple(start)))
    return end.tokens, end.finite


def _as_batch(prompt: Any, text_tokenizer: Callable[[], Any], stop_ids: list[int]) -> tuple[
        list[list[int]], Callable[[list], Any], Any]:
    """A prompt as a batch of id lists, how to answer in the form it came in (text for text, read with
    `text_tokenizer()`; ids for ids; one for one, a list for a batch), and the tokenizer that read it (None for ids).
    The answer takes each row's new ids; stop ids are dropped from text."""
    prompt = _listed(prompt)  # (an array: numpy's, JAX's, TensorFlow's)
    if isinstance(prompt, (list, tuple)):
        prompt = [scalar(_listed(p)) for p in prompt]
    as_bytes = (bytes, bytearray, memoryview)  # (TensorFlow's strings are bytes)
    if isinstance(prompt, as_bytes) or (isinstance(prompt, list) and any(isinstance(p, as_bytes) for p in prompt)):
        raise TypeError("prompt is bytes: decode it to str first (or pass token ids as a list of int)")
    if not isinstance(prompt, Sequence) or len(prompt) == 0:
        if isinstance(prompt, Sequence):
            raise ValueError("prompt is empty: give at least one token")
        raise TypeError(f"prompt must be text, a list of token ids or a batch of them, got {prompt!r:.80}")
    if isinstance(prompt, str) or all(isinstance(p, str) for p in prompt):
        tokenizer = text_tokenizer()
        texts = lambda rows: [tokenizer.decode([t for t in r if t not in stop_ids]) for r in rows]  # noqa: E731
        if isinstance(prompt, str):
            return [tokenizer.encode(prompt)], lambda rows: texts(rows)[0], tokenizer
        return [_encoded(tokenizer, p, i) for i, p in enumerate(prompt)], texts, tokenizer
    if all(is_integer(p) for p in prompt):
        return [[int(t) for t in prompt]], lambda rows: rows[0], None
    if any(isinstance(p, str) for p in prompt):
        raise TypeError("a batch is all texts or all lists of token ids, not both: tokenize the texts first, or "
                        "decode the ids")
    if all(isinstance(p, Sequence) for p in prompt):
        batch = [[scalar(t) for t in p] for p in prompt]
        if not all(is_integer(t) for p in batch for t in p):
            raise TypeError("token ids must be integers")
        return [[int(t) for t in p] for p in batch], lambda rows: rows, None
    raise TypeError(f"prompt must be text, a list of token ids or a batch of them, got {prompt!r:.80}")


def _listed(value: Any) -> Any:
    """An array of one or more dimensions (numpy, JAX, TensorFlow) as Python lists; anything else (a symbolic tensor
    too) as it is."""
    try:
        return np.asarray(value).tolist() if hasattr(value, "__array__") and np.ndim(value) >= 1 else value
    except Exception:  # (a traced or symbolic tensor has no value to read)
        return value


def _encoded(tokenizer: GPT2Tokenizer | CharacterTokenizer | Any, text: str, row: int) -> list[int]:
    """Prompt `row` of a batch of texts, read by `tokenizer`; a text it cannot read is named by its row."""
    try:
        return tokenizer.encode(text)
    except ValueError as e:
        raise ValueError(f"prompt [{row}] of the batch: {e}") from None


def _real(name: str, value: Any) -> float:
    """A finite real number (NaN and infinity refused), for a sampling setting, that float32 (the compiled code's)
    holds: one that overflows there is refused, and so is one too small for float32's normal numbers, which XLA
    computes as 0 (a top_p of 1e-40 would keep no token)."""
    value = scalar(value)
    number = is_integer(value) or isinstance(value, (float, np.floating))
    try:
        real = float(value) if number else math.nan
    except OverflowError:  # (an int past float64's range)
        real = math.inf
    if not math.isfinite(real):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    with np.errstate(over="ignore"):
        rounded = np.float32(real)
    if not np.isfinite(rounded) or 0 < abs(real) < np.finfo(np.float32).tiny:
        raise ValueError(f"{name} must be a finite number in float32 (as it is computed), of magnitude at least "
                         f"{np.finfo(np.float32).tiny:.3g} where it is not 0 (smaller ones compute as 0), got "
                         f"{value!r}")
    return float(value)  # (as given, for the messages that name it: 0.1, not 0.10000000149011612)


def _seed(seed: Any) -> np.int32:
    """A seed, checked; None: a fresh one from Python's `random` (each call samples anew, as Hugging Face's and
    keras-hub's do, and `keras.utils.set_random_seed` repeats a script's draws)."""
    if seed is None:
        return np.int32(random.randrange(2**31))
    seed = checked_integer("seed", seed)
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    return np.int32(seed)


class _Request(NamedTuple):
    """A checked `generate`/`stream` call, ready for the compiled code."""

    prompt: Prompt
    new_slots: np.ndarray  # [batch, budget]: its shape fixes the output buffer
    sampling: Sampling
    stop_ids: list[int]
    answer: Callable[[list[list[int]]], Any]  # each row's new ids -> the answer, in the form the prompt came in


def _prepare(model, prompt: Any, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, repetition_penalty: float = 1.0, stop_ids: Sequence[int] | None = None,
             seed: int | None = None, tokenizer=None, vocab_end: int | None = None) -> _Request:
    """Check every argument, then build what the compiled code takes: the left-padded prompts and the settings."""
    cfg = model.config
    max_new_tokens, vocab_end = scalar(max_new_tokens), scalar(vocab_end)  # (a 0-d array: numpy's, JAX's, TF's)
    given = stop_ids is not None
    if not given:
        stop_ids = default_stop_ids(cfg)
    stop_ids = checked_stop_ids(stop_ids, cfg.vocab_size)
    batch, answer, reader = _as_batch(prompt, lambda: tokenizer or tokenizer_for(cfg), stop_ids)
    if tokenizer is not None and reader is None:
        raise ValueError("tokenizer reads text, and token ids were given")
    # Text read with GPT-2's BPE or characters continues in ids they read: not in the rows of a vocabulary padded
    # past GPT-2's 50,257 (nanoGPT's 50,304), which no text decodes to
    read = reader.vocab_size if isinstance(reader, (GPT2Tokenizer, CharacterTokenizer)) else None
    if vocab_end is None:
        vocab_end = min(read or cfg.vocab_size, cfg.vocab_size)
    if not is_integer(vocab_end) or not 0 < vocab_end <= cfg.vocab_size:
        raise ValueError(f"vocab_end must be in 1..{cfg.vocab_size} (the model's vocabulary), got {vocab_end!r}")
    if read is not None and vocab_end > read:
        raise ValueError(f"vocab_end {vocab_end} is past the {read:,} ids the prompt's text is read in: ids from "
                         f"{read:,} on decode to no text; give token ids to continue in them")
    if given and (unreachable := [t for t in stop_ids if t >= vocab_end]):  # ids no chosen token takes
        raise ValueError(f"stop_ids {unreachable} are never written: tokens are chosen among ids below "
                         f"{vocab_end} (vocab_end)")
    stop_ids = [t for t in stop_ids if t < vocab_end]  # (the default, past a vocab_end given: inert)
    if empty := [i for i, p in enumerate(batch) if len(p) == 0]:
        raise ValueError("prompt is empty: give at least one token" if len(batch) == 1 else
                         f"prompt(s) {empty} of the batch are empty: give each at least one token")
    if not is_integer(max_new_tokens) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    max_new_tokens = int(max_new_tokens)  # (a numpy uint8 would wrap in the sums below)
    longest = max(len(p) for p in batch)
    if longest + max_new_tokens > cfg.n_positions:
        fit = (f"at most {cfg.n_positions - longest} new tokens fit"  # (`tf-gpt2 generate` names the flag)
               if longest < cfg.n_positions else "crop the prompt")
        rows = [i for i, p in enumerate(batch) if len(p) + max_new_tokens > cfg.n_positions]
        which = ("prompt" if len(batch) == 1 else
                 f"prompt(s) {rows[:10]}{' ...' * (len(rows) > 10)} of the batch, the longest")
        raise ValueError(f"{which} of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the context of "
                         f"{cfg.n_positions} positions: {fit}")
    if outside := [i for i, p in enumerate(batch) if min(p) < 0 or max(p) >= cfg.vocab_size]:
        check_in_vocabulary([t for i in outside for t in batch[i]], cfg.vocab_size,
                            "" if len(batch) == 1 else f" (prompt(s) {outside} of the batch)")
    temperature, top_k, top_p, repetition_penalty = _checked_settings(temperature, top_k, top_p, repetition_penalty)
    per_row = lambda value, dtype: np.full(len(batch), value, dtype)  # noqa: E731  (one setting for every row)
    sampling = Sampling(
        temperature=per_row(temperature, np.float32), top_k=per_row(top_k, np.int32),
        top_p=per_row(top_p, np.float32), repetition_penalty=per_row(repetition_penalty, np.float32),
        seed=((_seed(seed) + np.arange(len(batch))) % 2**31).astype(np.int32),  # row i: seed + i
        max_new_tokens=per_row(max_new_tokens, np.int32), stop_ids=np.array(stop_ids + [-1], np.int32),
        pad_id=np.int32(pad_id(cfg)), vocab_end=np.int32(vocab_end),
    )
    prompts = _left_padded(batch, min(_bucket(longest), cfg.n_positions), pad_id(cfg))
    return _Request(prompts, np.zeros((len(batch), _bucket(max_new_tokens)), np.int32), sampling, stop_ids, answer)


PENALTY_BOUND = 1e6


def _checked_settings(temperature, top_k, top_p, repetition_penalty) -> tuple[float, int, float, float]:
    """The sampling settings, each checked: (temperature, top_k, top_p, repetition_penalty)."""
    temperature, top_p, repetition_penalty = (_real(n, v) for n, v in (
        ("temperature", temperature), ("top_p", top_p), ("repetition_penalty", repetition_penalty)))
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    top_k = checked_integer("top_k", top_k)  # (a numpy top_k > 0 is a numpy bool, which a list * failed on)
    if not 0 <= top_k < 2**31:
        raise ValueError(f"top_k must be in [0, 2**31), got {top_k}")
    # As float32 computes it (np.float32(1e-6) is 1e-6 there). 1e-38 made seen logits +inf, a tie.
    if not np.float32(1 / PENALTY_BOUND) <= np.float32(repetition_penalty) <= np.float32(PENALTY_BOUND):
        raise ValueError(f"repetition_penalty must be in [{1 / PENALTY_BOUND:g}, {PENALTY_BOUND:g}] (1 is off; CTRL's "
                         f"paper uses 1.2), a bound that keeps seen tokens' logits finite, got {repetition_penalty}")
    filters = [f"top_k={top_k}"] * (top_k > 0) + [f"top_p={top_p:g}"] * (top_p < 1)
    if temperature == 0 and filters:
        raise ValueError(f"{' and '.join(filters)} filter{'s' * (len(filters) == 1)} what is sampled, and temperature "
                         "0 samples nothing (greedy): give a temperature > 0 (1 samples the model's own distribution)")
    return temperature, top_k, top_p, repetition_penalty


def check_settings(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                   seed: int | None = None) -> None:
    """Refuse the sampling settings `generate` refuses, before a model is at hand (`tf-gpt2 generate` checks its
    flags so, not after minutes of loading a model)."""
    _checked_settings(temperature, top_k, top_p, repetition_penalty)
    if seed is not None:
        _seed(seed)


def _left_padded(batch: list[list[int]], width: int, pad: int) -> Prompt:
    """The rows right-aligned in `width` columns, `pad` and mask 0 before them."""
    ids, mask = np.full((len(batch), width), pad, np.int32), np.zeros((len(batch), width), np.int32)
    for row, p in enumerate(batch):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    return Prompt(ids, mask)


def generate(
    model,
    prompt: Any,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop_ids: Sequence[int] | None = None,
    seed: int | None = None,
    tokenizer=None,
    vocab_end: int | None = None,
) -> Any:
    """Continue `prompt` with up to `max_new_tokens` tokens.

    `prompt` is text (returns the continuation text), a list or tuple of texts, a list of token ids
    (returns new ids), or a batch of id lists of any lengths (returns a list of id lists). Text is read with
    `tokenizer`, by default the model's own: its characters (`GPT2Config.characters`), else GPT-2's BPE.
    temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off (top-p is taken on the
    top-k distribution renormalised). Generation of a row stops after a token in `stop_ids` (ids of the model's
    vocabulary; default: `<|endoftext|>` where the model's ids are GPT-2's, none for a character model), which is
    kept in the ids and dropped from returned text. Text that ends within a character (a byte-level BPE token holds
    part of its UTF-8 bytes) ends in U+FFFD there, as GPT-2's decoder writes it; ids keep every byte. A sampling
    call without a `seed` draws a fresh one, so two calls sample apart; with one it samples the same tokens on
    either backend and in a SavedModel. Row i of a batch samples with seed `seed + i`: its tokens are those of that
    prompt alone with that seed (so calls that loop over seeds step them by the batch's size). No id from
    `vocab_end` on is chosen
    (default: the end of the vocabulary of GPT-2's BPE or the characters that read text, else the model's: a
    vocabulary padded past GPT-2's 50,257 continues text in GPT-2's ids only). Raises FloatingPointError where a
    token would be chosen from logits that are not finite (NaN or inf).

    Example:
    >>> from tf_gpt2 import GPT2, GPT2Config
    >>> model = GPT2(GPT2Config.from_preset("gpt2-tiny"))
    >>> len(model.generate([464, 3290], max_new_tokens=5, stop_ids=[]))
    5
    """
    request = _prepare(model, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop_ids,
                       seed, tokenizer, vocab_end)
    out, finite = compiled(model, generate_loop)(request.prompt, request.new_slots, request.sampling)
    refuse_non_finite(ops.convert_to_numpy(finite))
    lengths = ops.convert_to_numpy(answer_lengths(out, request.sampling))
    rows = [row[:n] for row, n in zip(ops.convert_to_numpy(out).tolist(), lengths)]
    return request.answer(rows)


def refuse_non_finite(finite: np.ndarray) -> None:
    """Raise where a row's next token would be chosen from NaN or infinite logits (`finite`: bool [batch], False
    there): a broken model, or one that overflows in its precision; no token could be told from the others."""
    if not finite.all():
        rows = "" if len(finite) == 1 else f" for prompt(s) {np.flatnonzero(~finite).tolist()} of the batch"
        raise FloatingPointError(f"the model produced non-finite logits (NaN or inf){rows}: it cannot choose a "
                                 "next token; check its weights (or its precision) with `tf-gpt2 eval`")


def stream(model, prompt: Any, max_new_tokens: int = 32, **settings: Any) -> Iterator[int]:
    """Yield the new token ids of one prompt as they are chosen (same tokens as `generate`, which
    documents the `settings`: temperature, top_k, top_p, repetition_penalty, stop_ids, seed, tokenizer, vocab_end).

    Prefill and each decode step are compiled once per shape bucket; Python only loops. The arguments are checked
    at the call; FloatingPointError is raised as `generate` raises it, before the token it could not choose.
    """
    request = _prepare(model, prompt, max_new_tokens, **settings)
    if len(request.prompt.ids) != 1:
        raise ValueError("stream takes a single prompt")
    return _streamed(model, request, max_new_tokens)


def _streamed(model, request: _Request, max_new_tokens: int) -> Iterator[int]:
    state = compiled(model, prefill)(request.prompt, request.new_slots)
    step = compiled(model, decode_step)
    for i in range(max_new_tokens):
        state = step(state, request.sampling)
        refuse_non_finite(ops.convert_to_numpy(state.finite))
        token = int(ops.convert_to_numpy(state.tokens)[0, i])
        yield token
        if token in request.stop_ids:
            return
