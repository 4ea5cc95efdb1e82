"""Deployment to TF Serving: a SavedModel with logits, generation, text-in/text-out and tokenizer signatures.

SavedModel (`export_saved_model`) writes `<base>/<version>/` with four signatures; every input and
output has a leading batch dimension, so TF Serving's batcher can merge requests:
  serving_default(token_ids [B, T], length [B])                        -> logits [B, T, vocab], error [B]
  generate(token_ids, length, max_new_tokens [B], temperature [B],
           top_k [B], top_p [B], seed [B])                            -> token_ids [B, N], length [B], error [B]
  generate_text(text [B], max_new_tokens, temperature, top_k, top_p, seed) -> text, token_ids, length, error
  tokenize(text [B])                                                   -> token_ids [B, N], length [B], error [B]
Row i's prompt is its first `length[i]` tokens (what follows is ignored); each setting is one value per
row, or a single value for all rows. A row's answer is its first `length[i]` new tokens (up to and with
`<|endoftext|>`). The graphs run with XLA compilation off, as the stock server runs them; `xla=True` decodes in
XLA programs instead, for a server started with `--xla_cpu_compilation_enabled` (faster: README, TF Serving).

A row that breaks a rule (an id outside the vocabulary, a length or setting out of range, text too long, logits
that are not finite where a token is to be chosen) does not
fail the request, nor the others TF Serving's batcher merged it with: its `error` names the rule, its `length` is 0,
its ids are padding and its text and logits empty or 0; every other row answers as it would alone (`error` "").
What cannot be split by rows fails the request: a missing input, a wrong dtype, a setting with neither one value
nor one per row (the batcher refuses such a request on its own).
The tokenizer is in the graph (`tf_gpt2.graph_tokenizer`: GPT-2's BPE as `GPT2Tokenizer`, but for a contraction after
a letter Unicode 15.1 or 16.0 added; or a character model's own characters); its ops come from tensorflow-text:
`import tensorflow_text` before `tf.saved_model.load` outside TF Serving.
Phones and other devices: see `tf_gpt2.litert`.
"""

from __future__ import annotations

import os
import re
import warnings

import keras
import tensorflow as tf

from tf_gpt2.checks import is_integer, require_tensorflow
from tf_gpt2.data import warn_of_a_folder_of_texts
from tf_gpt2.files import atomic_write, bytes_writer, exclusive
from tf_gpt2.generation import (
    Prompt,
    Sampling,
    answer_lengths,
    default_stop_ids,
    generate_loop,
    pad_id,
    positions_from_mask,
)
from tf_gpt2.graph_tokenizer import BytePairGraphTokenizer, CharacterGraphTokenizer
from tf_gpt2.layers import cache_buffers
from tf_gpt2.model import GPT2
from tf_gpt2.tokenizer import VOCAB_SIZE


def _row_errors(batch, rules) -> tf.Tensor:
    """String [batch]: for each row the message of the first rule it breaks, "" when none.

    `rules` is a list of (bool [batch], message): True where the row breaks that rule.
    """
    error = tf.fill([batch], "")
    for broken, message in reversed(rules):
        error = tf.where(broken, message, error)
    return error


def _subnormal(x):
    """Where float32 `x` is subnormal (not 0, below 1.2e-38): CPUs compute such a value as 0, compared too, so it
    is told by its bits (exponent 0, mantissa not)."""
    bits = tf.bitwise.bitwise_and(tf.bitcast(x, tf.int32), 0x7FFFFFFF)
    return (bits > 0) & (bits < 0x00800000)


def _ranked(*values):
    """`values` once each has its signature's rank: the server feeds a request's tensors in whatever shape they came
    (predict_util.cc checks none; a REST scalar is rank 0), and the message names the input whose shape is not."""
    return [tf.ensure_shape(value, [None] * value.shape.rank) for value in values]


def _prompt_errors(token_ids, length, config, error):
    """Each row's error: `error` [batch] (rows refused earlier) with the rules of a prompt (row i's is the first
    `length[i]` tokens of `token_ids`), checked in the graph."""
    check = tf.debugging.assert_equal(tf.shape(length), tf.shape(token_ids)[:1],
                                      message="length must have one value per row of token_ids")
    with tf.control_dependencies([check]):
        sent = tf.shape(token_ids)[1]
    mask = tf.sequence_mask(length, sent, dtype=tf.int32)
    outside = tf.logical_and(mask == 1, tf.logical_or(token_ids < 0, token_ids >= config.vocab_size))
    return tf.where(error == "", _row_errors(tf.shape(length)[0], [
        (tf.logical_or(length < 1, length > sent), "length must be in [1, number of columns of token_ids]"),
        (length > config.n_positions, f"the prompt is longer than the context of {config.n_positions} tokens"),
        (tf.reduce_any(outside, axis=1), f"token ids must be in [0, {config.vocab_size})"),
    ]), error)


def _prompt(token_ids, length, config, error):
    """A left-padded `Prompt` from right-padded rows (row i's prompt is its first `length[i]` tokens), and the
    lengths it holds: a row refused (`error` not "", for any rule) runs as a one-token prompt, which fits.

    What follows a row's prompt is ignored (TF Serving's batcher pads a shorter request with its own first
    element), so a merged batch answers each row as it would alone.
    """
    token_ids = tf.pad(token_ids, [[0, 0], [0, tf.maximum(1 - tf.shape(token_ids)[1], 0)]])  # a column to run
    length = tf.where(error == "", length, 1)
    width = tf.minimum(tf.shape(token_ids)[1], config.n_positions)  # the columns past the context: refused rows'
    mask = tf.sequence_mask(length, width, dtype=tf.int32)
    ids = tf.where(tf.logical_and(mask == 1, error[:, None] == ""), token_ids[:, :width], pad_id(config))
    # Move each row's tokens to the right end (left padding), as generation expects.
    return Prompt(_rotate(ids, width - length), _rotate(mask, width - length)), length


def _bucket(n, least, most=2**30):
    """n rounded up to a power of two, at least `least`, at most `most` (but never below n)."""
    powers = tf.bitwise.left_shift(1, tf.range(31))
    power = tf.reduce_min(tf.where(powers >= n, powers, 2**30))
    return tf.maximum(tf.minimum(tf.maximum(power, least), most), n)


# The fields of `Sampling` with one value per row.
PER_ROW = ("temperature", "top_k", "top_p", "repetition_penalty", "seed", "max_new_tokens")


def _rotate(rows, shift):
    """Each row of `rows` [batch, width, ...] rotated right by its `shift` [batch] (negative: left)."""
    width = tf.shape(rows)[1]
    index = tf.math.floormod(tf.range(width)[None, :] - shift[:, None], width)
    return tf.gather(rows, index, batch_dims=1)


def _per_row(name: str, value, batch):
    """A setting sent as one value per row ([batch]) or one for all ([1], or a scalar), as [batch]."""
    value = tf.reshape(value, [-1])  # (a REST scalar, rank 0: one value)
    check = tf.debugging.assert_equal(tf.logical_or(tf.size(value) == 1, tf.size(value) == batch), True,
                                      message=f"{name} must have one value per row, or a single value")
    with tf.control_dependencies([check]):
        return tf.broadcast_to(value, [batch])


class _InPlaceCache:
    """KV-cache buffers for graphs run without XLA (TF Serving): each a fresh buffer, written in place.

    A functional update (`tensor_scatter_nd_update`) copies the whole layer cache at every token: at batch 32 that
    was a sixth of a served step. `InplaceUpdate` writes the step's rows into the buffer it is given (a core
    TensorFlow kernel that aliases its input), which is safe here because each buffer has one user: `Empty` makes
    a new one per layer and request (a stateful op, so grappler never merges two), and a decoding step reads a
    cache only on the way to its logits, which the next step's write waits for.
    """

    @staticmethod
    def new(shape, dtype):
        return tf.raw_ops.Empty(shape=tf.stack(shape), dtype=dtype, init=True)

    @staticmethod
    def write(buffer, updates, index):
        """`buffer` [batch, heads, length, dim] with `updates` [batch, heads, time, dim] at slots index, index+1..."""
        batch, heads, length, dim = tf.unstack(tf.shape(buffer))
        slots = index + tf.range(tf.shape(updates)[2])
        rows = (tf.range(batch)[:, None, None] * heads + tf.range(heads)[None, :, None]) * length + slots[None, None, :]
        flat = tf.raw_ops.InplaceUpdate(x=tf.reshape(buffer, [-1, dim]), i=tf.reshape(rows, [-1]),
                                        v=tf.reshape(updates, [-1, dim]))
        return tf.reshape(flat, tf.shape(buffer))


class _Serving:
    """The functions behind the SavedModel's signatures."""

    def __init__(self, model: GPT2, max_new_tokens_limit: int, max_text_bytes: int, max_word_bytes: int,
                 xla: bool = False):
        self.model, self.xla = model, xla
        self.max_text_bytes = max_text_bytes
        characters = model.config.characters
        # Text is served in the model's characters, or in GPT-2's BPE when its ids are GPT-2's; else not at all.
        self.tokenizer = (CharacterGraphTokenizer(characters) if characters else
                          BytePairGraphTokenizer(max_word_bytes=max_word_bytes)
                          if model.config.vocab_size >= VOCAB_SIZE else None)
        # Text continues in ids its tokenizer reads: not in the rows of a vocabulary padded past GPT-2's.
        self.text_vocab = model.config.vocab_size if characters else VOCAB_SIZE
        self.limit = max_new_tokens_limit
        self.pad_id = pad_id(model.config)
        self.stop_ids = default_stop_ids(model.config)  # none in a character model

    def logits(self, token_ids, length):
        token_ids, length = _ranked(token_ids, length)
        error = _prompt_errors(token_ids, length, self.model.config, tf.fill(tf.shape(length), ""))
        prompt, length = _prompt(token_ids, length, self.model.config, error)
        logits = self.model(prompt.ids, attention_mask=prompt.mask, position_ids=positions_from_mask(prompt.mask))
        width = tf.shape(prompt.ids)[1]  # back to the rows as they were sent: the prompt first
        sent = tf.logical_and(tf.sequence_mask(length, width), error[:, None] == "")[:, :, None]
        logits = tf.where(sent, _rotate(logits, length - width), 0.0)  # 0 past a row's prompt, and in refused rows
        columns = tf.shape(token_ids)[1]  # as many columns as were sent
        logits = tf.pad(logits, [[0, 0], [0, tf.maximum(columns - width, 0)], [0, 0]])[:, :columns]
        return {"logits": logits, "error": error}

    def generate(self, token_ids, length, max_new_tokens, temperature, top_k, top_p, seed):
        token_ids, length = _ranked(token_ids, length)
        return self._generate(token_ids, length, (max_new_tokens, temperature, top_k, top_p, seed),
                              tf.fill(tf.shape(length), ""), self.model.config.vocab_size)

    def _generate(self, token_ids, length, settings, error, vocab_end):
        cfg, batch = self.model.config, tf.shape(token_ids)[0]
        error = _prompt_errors(token_ids, length, cfg, error)
        knobs = {name: _per_row(name, value, batch)
                 for name, value in zip(("max_new_tokens", "temperature", "top_k", "top_p", "seed"), settings)}
        new = knobs["max_new_tokens"]
        error = tf.where(error == "", _row_errors(batch, [
            (new < 1, "max_new_tokens must be > 0"),
            (new > self.limit, f"max_new_tokens must be <= {self.limit}"),
            (length + new > cfg.n_positions, tf.strings.join([  # (as model.generate says it: how far over)
                "prompt of ", tf.strings.as_string(length), " tokens + max_new_tokens ", tf.strings.as_string(new),
                f" exceeds the context of {cfg.n_positions} positions: crop the prompt"])),
            # Below float32's smallest normal number, a setting computes as 0 (as model.generate refuses it).
            (_subnormal(knobs["temperature"]), "temperature must be 0 or at least 1.2e-38 (smaller computes as 0)"),
            (_subnormal(knobs["top_p"]), "top_p must be at least 1.2e-38 (smaller computes as 0)"),
            # Not ~(t >= 0): grappler rewrites that to t < 0, which a NaN passes. (inf would sample uniformly.)
            (~tf.math.is_finite(knobs["temperature"]) | (knobs["temperature"] < 0),
             "temperature must be a finite number >= 0"),
            (knobs["top_k"] < 0, "top_k must be >= 0 (0: off)"),
            (tf.math.is_nan(knobs["top_p"]) | (knobs["top_p"] <= 0) | (knobs["top_p"] > 1), "top_p must be in (0, 1]"),
            (knobs["seed"] < 0, "seed must be >= 0"),  # as model.generate's: [0, 2**31)
            ((knobs["temperature"] == 0) & ((knobs["top_k"] > 0) | (knobs["top_p"] < 1)),  # as model.generate's
             "top_k and top_p filter what is sampled, and temperature 0 samples nothing (greedy): give top_k 0 and "
             "top_p 1, or a temperature > 0"),
        ]), error)
        prompt, length = _prompt(token_ids, length, cfg, error)  # (a row refused by any rule: one token)
        ok = error == ""
        # A refused row asks for one greedy token, so it costs the batch nothing.
        for name, default in (("max_new_tokens", 1), ("temperature", 0.0), ("top_k", 0), ("top_p", 1.0)):
            knobs[name] = tf.where(ok, knobs[name], default)
        # One seed for a request of several rows: row i samples with seed + i, as model.generate does.
        offset = tf.range(batch, dtype=tf.int64) * tf.cast(tf.size(settings[-1]) == 1, tf.int64)
        knobs["seed"] = tf.cast(tf.math.floormod(tf.cast(knobs["seed"], tf.int64) + offset, 2**31), tf.int32)
        sampling = Sampling(repetition_penalty=tf.ones([batch]), stop_ids=tf.constant(self.stop_ids + [-1], tf.int32),
                            pad_id=tf.constant(self.pad_id), vocab_end=tf.constant(vocab_end), **knobs)
        # The cache holds the longest prompt and the largest budget of this batch, no more (at least one of each:
        # a request of no rows answers no rows).
        longest = tf.maximum(tf.reduce_max(length), 1)
        new_slots = tf.zeros((batch, tf.maximum(tf.reduce_max(knobs["max_new_tokens"]), 1)), tf.int32)
        out, finite = self._loop(Prompt(prompt.ids[:, -longest:], prompt.mask[:, -longest:]), new_slots, sampling)
        error = tf.where(ok & ~finite, "the model produced non-finite logits (NaN or inf)", error)
        ok = error == ""
        return {"token_ids": tf.where(ok[:, None], out, self.pad_id),
                "length": tf.where(ok, answer_lengths(out, sampling), 0), "error": error}

    def _loop(self, prompt, new_slots, sampling):
        """`generate_loop` (the new tokens, and which rows chose them from finite logits); under XLA, on a batch
        whose rows, prompt length and budget are rounded up to powers of two (`_bucketed_loop`)."""
        if not self.xla:
            return generate_loop(self.model, prompt, new_slots, sampling)
        # A request of no rows has no row 0 to copy: it answers no rows without running.
        return tf.cond(tf.shape(new_slots)[0] > 0, lambda: self._bucketed_loop(prompt, new_slots, sampling),
                       lambda: (tf.zeros_like(new_slots), tf.zeros([0], tf.bool)))

    def _bucketed_loop(self, prompt, new_slots, sampling):
        """One program per bucket of rows, prompt length and budget, as model.generate compiles them: the extra rows
        copy row 0 and stop after one token, the extra columns are padding."""
        (batch, budget), width = tf.unstack(tf.shape(new_slots)), tf.shape(prompt.ids)[1]
        rows = tf.concat([tf.range(batch), tf.zeros([_bucket(batch, 1) - batch], tf.int32)], 0)
        per_row = {name: tf.gather(getattr(sampling, name), rows) for name in PER_ROW}
        per_row["max_new_tokens"] = tf.where(rows == tf.range(tf.size(rows)), per_row["max_new_tokens"], 1)
        columns = _bucket(width, 8, self.model.config.n_positions) - width
        prompt = Prompt(tf.pad(tf.gather(prompt.ids, rows), [[0, 0], [columns, 0]], constant_values=self.pad_id),
                        tf.pad(tf.gather(prompt.mask, rows), [[0, 0], [columns, 0]]))
        new_slots = tf.zeros([tf.size(rows), _bucket(budget, 8, self.limit)], tf.int32)
        tokens, finite = self._compiled_loop(prompt, new_slots, sampling._replace(**per_row))
        return tokens[:batch, :budget], finite[:batch]

    @tf.function(jit_compile=True, autograph=False)
    def _compiled_loop(self, prompt, new_slots, sampling):
        with cache_buffers(None):  # XLA writes the cache in place itself
            return generate_loop(self.model, prompt, new_slots, sampling)

    def _tokenize(self, text):
        """Ragged ids of `text` [batch] and each row's error; text over the bounds is refused before tokenizing,
        its row left empty (and the BPE refuses a word longer than `max_word_bytes`: its time grows with the
        square of a word's length)."""
        (text,) = _ranked(text)
        error = _row_errors(tf.shape(text)[0], [
            (tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace") != text, "text is not UTF-8"),
            (tf.strings.length(text) > self.max_text_bytes, f"text is longer than {self.max_text_bytes} bytes"),
        ])
        ids, tokenizer_error = self.tokenizer(tf.where(error == "", text, ""))
        error = tf.where(error == "", tokenizer_error, error)
        return ids, tf.where(tf.logical_and(error == "", ids.row_lengths() == 0), "text is empty", error)

    def tokenize(self, text):
        ids, error = self._tokenize(text)
        length = tf.where(error == "", tf.cast(ids.row_lengths(), tf.int32), 0)
        return {"token_ids": tf.RaggedTensor.from_tensor(ids.to_tensor(), lengths=length).to_tensor(self.pad_id),
                "length": length, "error": error}

    def generate_text(self, text, max_new_tokens, temperature, top_k, top_p, seed):
        ids, error = self._tokenize(text)
        answer = self._generate(ids.to_tensor(default_value=self.pad_id), tf.cast(ids.row_lengths(), tf.int32),
                                (max_new_tokens, temperature, top_k, top_p, seed), error, self.text_vocab)
        last = tf.gather(answer["token_ids"], tf.maximum(answer["length"] - 1, 0), batch_dims=1)
        ends_with_stop = tf.reduce_any(last[:, None] == tf.constant(self.stop_ids, tf.int32), axis=1)
        kept = answer["length"] - tf.cast(ends_with_stop & (answer["length"] > 0), tf.int32)  # a stop is not text
        words = self.tokenizer.detokenize(tf.RaggedTensor.from_tensor(answer["token_ids"], lengths=kept))
        # An answer cut inside a multi-byte character ends with an incomplete one: U+FFFD replaces it, as
        # bytes.decode(errors="replace") does, so the text is valid UTF-8 (TF Serving's REST writes it raw).
        text = tf.strings.unicode_transcode(words, "UTF-8", "UTF-8", errors="replace")
        return {"text": text, **answer}


# TF Serving's batcher (`tensorflow_model_server --enable_batching --batching_parameters_file=...`), written
# beside the versions by `export_saved_model` (the server loads only numbered directories from there).
BATCHING_PARAMETERS = """\
# Server-side batching for tf_gpt2's signatures: tensorflow_model_server --enable_batching
#   --batching_parameters_file=<this file>. Requests are merged into one batch of up to 32 rows; one that
# arrives within 20 ms of the first joins it. Prompts of different lengths are padded (each request's
# `length` says where its prompt ends), and a merged batch runs until its longest answer is done.
# A request of more than max_batch_size rows is refused ("Task size N is larger than maximum input batch
# size 32"): send at most 32 rows a request, or raise max_batch_size. Leave enable_large_batch_splitting off:
# the server would join the parts of a split request with outputs of different widths wrongly.
max_batch_size { value: 32 }
batch_timeout_micros { value: 20000 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 1 }
pad_variable_length_inputs: true
"""


LARGEST_VERSION = 2**63 - 1  # TF Serving reads a version folder's name as a signed 64-bit integer


def _versions(base: str) -> dict[int, str]:
    """The folders of `base` TF Serving loads as versions, by number: each name it reads as an int64, as absl's
    SimpleAtoi does (tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc, ParseVersionNumber:
    "7" and "007" are both version 7; a number past int64 is no version)."""
    names = os.listdir(base) if os.path.isdir(base) else []
    numbered = {name: int(name) for name in names if re.fullmatch(r"[ \t\n\v\f\r]*[+-]?[0-9]+[ \t\n\v\f\r]*", name)}
    return {number: name for name, number in sorted(numbered.items()) if abs(number) <= LARGEST_VERSION}


def _next_version(base: str) -> int:
    version = max((v for v in _versions(base) if v > 0), default=0) + 1
    if version > LARGEST_VERSION:
        raise ValueError(f"{base} holds version {version - 1}, the largest TF Serving reads: give --version")
    return version


SERVED_DTYPES = ("float32", "bfloat16")


def export_saved_model(model: GPT2, base_dir: str, version: int | None = None,
                       max_new_tokens_limit: int | None = None, max_text_bytes: int | None = None,
                       max_word_bytes: int = 256, dtype: str | None = None, xla: bool = False) -> str:
    """Write a TF Serving model version `<base_dir>/<version>/` and return its path.

    `dtype` "bfloat16" stores the weights and runs the arithmetic in bfloat16 (logits stay float32): half the
    weight memory; on a CPU with avx512_bf16 (an AMD EPYC) the fastest export at batch 32 and the slowest at batch 1
    (docs/serving.md); default: the model's own.

    `xla=True` runs prefill and decoding as one XLA program per bucket of batch size, prompt length and budget
    (powers of two; each compiled on its first request): nearly as fast as `model.generate` (docs/serving.md), but
    only on a server started with `--xla_cpu_compilation_enabled` (a stock server without it answers every
    generation with an error).

    `max_new_tokens_limit` is the most new tokens a row may ask for (default 256, or the context if smaller; more
    than the context is refused). `generate_text` refuses a text longer than `max_text_bytes` (default 8 bytes per
    position of the context) before tokenizing it, and one with a word of GPT-2's pre-tokenizer (a run of letters,
    digits, other symbols or whitespace) longer than `max_word_bytes` before encoding that word (a character model's
    text has no such bound).
    """
    require_tensorflow("a SavedModel export")
    context = model.config.n_positions
    max_text_bytes = 8 * context if max_text_bytes is None else max_text_bytes
    max_new_tokens_limit = min(256, context) if max_new_tokens_limit is None else max_new_tokens_limit
    for name, value in (("max_new_tokens_limit", max_new_tokens_limit), ("max_text_bytes", max_text_bytes),
                        ("max_word_bytes", max_word_bytes), ("version", 1 if version is None else version)):
        if not is_integer(value) or value <= 0:  # TF Serving loads versions >= 1
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if version is not None and version > LARGEST_VERSION:  # a folder the server would skip without a word
        raise ValueError(f"version must be at most {LARGEST_VERSION} (TF Serving reads it as a 64-bit integer), got "
                         f"{version}")
    if os.path.exists(os.path.join(base_dir, "saved_model.pb")):  # a version inside it is one TF Serving never sees
        if os.path.basename(os.path.normpath(base_dir)).isdigit():
            raise ValueError(f"{base_dir} is a version of a served model (it holds saved_model.pb): give the base "
                             f"folder the server watches, {os.path.dirname(os.path.abspath(base_dir))}, and the "
                             "export goes beside its versions")
        raise ValueError(f"{base_dir} holds a SavedModel of its own (saved_model.pb): give a folder of served "
                         "versions, or a new one")
    if max_new_tokens_limit > context:
        raise ValueError(f"max_new_tokens_limit {max_new_tokens_limit} exceeds the model's context of {context} "
                         "positions: no row could ask for that many")
    if dtype is not None:
        if dtype not in SERVED_DTYPES:
            raise ValueError(f"dtype must be one of {SERVED_DTYPES}, got {dtype!r}")
        model = model.with_dtype(dtype)
    warn_of_a_folder_of_texts(base_dir, "an export")
    module = _Serving(model, max_new_tokens_limit, max_text_bytes, max_word_bytes, xla)
    if module.tokenizer is None:
        warnings.warn(f"a model of {model.config.vocab_size} tokens without its characters has no tokenizer: its "
                      "SavedModel serves token ids only (no generate_text, no tokenize signature)", stacklevel=2)
    i32, f32 = tf.int32, tf.float32
    # Every input has a leading batch dimension, so TF Serving's batcher can merge requests.
    ids_spec = tf.TensorSpec([None, None], i32, "token_ids")
    length_spec = tf.TensorSpec([None], i32, "length")
    settings = [tf.TensorSpec([None], dtype, name) for name, dtype in (
        ("max_new_tokens", i32), ("temperature", f32), ("top_k", i32), ("top_p", f32), ("seed", i32))]
    archive = keras.export.ExportArchive()
    # The endpoints' variables are saved because they use them; tracking the model as well would store every
    # weight a second time (as the Keras variable and as the TF variable under it).
    archive.add_endpoint("serving_default", module.logits, [ids_spec, length_spec])
    archive.add_endpoint("generate", module.generate, [ids_spec, length_spec, *settings])
    if module.tokenizer is not None:
        archive.track(module.tokenizer)  # its lookup tables
        text_spec = tf.TensorSpec([None], tf.string, "text")
        archive.add_endpoint("generate_text", module.generate_text, [text_spec, *settings])
        archive.add_endpoint("tokenize", module.tokenize, [text_spec])
    # One export into a base directory at a time: another one waits, then takes the next version.
    with exclusive(base_dir, "export", wait=True):
        version = version or _next_version(base_dir)
        final_dir = os.path.join(base_dir, str(version))
        taken = _versions(base_dir)
        if os.path.exists(final_dir) or version in taken:
            name = os.path.join(base_dir, taken.get(version, str(version)))
            raise FileExistsError(f"{name} exists: it is version {version} to TF Serving: choose another version")
        # Written aside and moved into place in one rename: TF Serving never sees half a version.
        with cache_buffers(None if xla else _InPlaceCache):  # without XLA (the server's default): no XLA-only op
            atomic_write(final_dir, lambda tmp: archive.write_out(tmp, verbose=False))  # the endpoints trace here
        batching = os.path.join(base_dir, "batching_parameters.txt")
        if not os.path.exists(batching):  # a file the user edited stays as it is
            atomic_write(batching, bytes_writer(BATCHING_PARAMETERS.encode()))
    # config/model_server_config.proto: "The default option is to serve only the latest version of the model."
    if version < (newest := max(taken, default=0)):
        warnings.warn(f"version {version} is older than version {newest} in {base_dir}: TF Serving's default version "
                      f"policy serves only the newest, {newest}; give this export a larger --version, or name it in "
                      "the server's model_version_policy", stacklevel=2)
    return final_dir
