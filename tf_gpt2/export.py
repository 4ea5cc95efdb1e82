"""Deployment to TF Serving: a SavedModel with logits, generation and text-in/text-out signatures.

SavedModel (`export_saved_model`) writes `<base>/<version>/` with three signatures; every input and
output has a leading batch dimension, so TF Serving's batcher can merge requests:
  serving_default(token_ids [B, T], length [B])                        -> logits [B, T, vocab]
  generate(token_ids, length, max_new_tokens [B], temperature [B],
           top_k [B], top_p [B], seed [B])                            -> token_ids [B, N], length [B]
  generate_text(text [B], max_new_tokens, temperature, top_k, top_p, seed) -> text, token_ids, length
Row i's prompt is its first `length[i]` tokens (what follows is ignored); each setting is one value per
row, or a single value for all rows. A row's answer is its first `length[i]` new tokens (up to and with
`<|endoftext|>`). The graphs run with XLA compilation off, as the stock server runs them.
The tokenizer is in the graph (keras-hub's BytePairTokenizer, whose ops come from
tensorflow-text: `import tensorflow_text` before `tf.saved_model.load` outside TF Serving).
Phones and other devices: see `tf_gpt2.litert`.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tf_gpt2.checks import is_integer
from tf_gpt2.files import atomic_write, bytes_writer
from tf_gpt2.generation import Prompt, Sampling, answer_lengths, generate_loop, pad_id, positions_from_mask
from tf_gpt2.layers import scatter_cache_writes
from tf_gpt2.model import GPT2
from tf_gpt2.tokenizer import EOT_ID, GPT2Tokenizer


def _prompt(token_ids, length, config):
    """Checked left-padded `Prompt` from right-padded rows: row i's prompt is its first `length[i]` tokens.

    What follows a row's prompt is ignored (TF Serving's batcher pads a shorter request with its own first
    element), so a merged batch answers each row as it would alone. A served model has no eager Python in
    front of it: the checks are in the graph.
    """
    vocab_size, pad = config.vocab_size, pad_id(config)
    width = tf.shape(token_ids)[1]
    mask = tf.sequence_mask(length, width, dtype=tf.int32)
    checks = [
        tf.debugging.assert_less_equal(width, config.n_positions,
                                       message=f"token_ids has more columns than the context of {config.n_positions}"),
        tf.debugging.assert_equal(tf.shape(length), tf.shape(token_ids)[:1],
                                  message="length must have one value per row of token_ids"),
        tf.debugging.assert_equal(tf.reduce_all(tf.logical_and(length >= 1, length <= width)), True,
                                  message="every length must be in [1, number of columns of token_ids]"),
        tf.debugging.assert_equal(tf.reduce_all(tf.logical_or(mask == 0, tf.logical_and(
            token_ids >= 0, token_ids < vocab_size))), True, message=f"token ids must be in [0, {vocab_size})"),
    ]
    with tf.control_dependencies(checks):
        ids = tf.where(mask == 1, token_ids, pad)  # the padding is whatever the client or batcher put there
    # Move each row's tokens to the right end (left padding), as generation expects.
    return Prompt(_rotate(ids, width - length), _rotate(mask, width - length))


def _rotate(rows, shift):
    """Each row of `rows` [batch, width, ...] rotated right by its `shift` [batch] (negative: left)."""
    width = tf.shape(rows)[1]
    index = tf.math.floormod(tf.range(width)[None, :] - shift[:, None], width)
    return tf.gather(rows, index, batch_dims=1)


def _per_row(name: str, value, batch):
    """A setting sent as one value per row ([batch]) or one for all ([1]), as [batch]."""
    check = tf.debugging.assert_equal(tf.logical_or(tf.size(value) == 1, tf.size(value) == batch), True,
                                      message=f"{name} must have one value per row, or a single value")
    with tf.control_dependencies([check]):
        return tf.broadcast_to(value, [batch])


class _Serving:
    """The functions behind the SavedModel's signatures."""

    def __init__(self, model: GPT2, max_new_tokens_limit: int, max_text_bytes: int, max_word_bytes: int):
        self.model = model
        self.max_text_bytes, self.max_word_bytes = max_text_bytes, max_word_bytes
        self.tokenizer = GPT2Tokenizer().tf_layer()
        self.tokenizer(tf.constant([""]))  # build it, so the export can track its lookup tables
        self.limit = max_new_tokens_limit
        self.pad_id = pad_id(model.config)

    def logits(self, token_ids, length):
        prompt = _prompt(token_ids, length, self.model.config)
        logits = self.model(prompt.ids, attention_mask=prompt.mask, position_ids=positions_from_mask(prompt.mask))
        width = tf.shape(token_ids)[1]  # back to the rows as they were sent: the prompt first
        sent = tf.sequence_mask(length, width)[:, :, None]  # logits past a row's prompt are 0
        return {"logits": tf.where(sent, _rotate(logits, length - width), 0.0)}

    def generate(self, token_ids, length, max_new_tokens, temperature, top_k, top_p, seed):
        cfg, batch = self.model.config, tf.shape(token_ids)[0]
        prompt = _prompt(token_ids, length, cfg)
        knobs = {name: _per_row(name, value, batch) for name, value in (
            ("max_new_tokens", max_new_tokens), ("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
            ("seed", seed))}
        # One seed for a request of several rows: row i samples with seed + i, as model.generate does.
        offset = tf.range(batch, dtype=tf.int64) * tf.cast(tf.size(seed) == 1, tf.int64)
        knobs["seed"] = tf.cast(tf.math.floormod(tf.cast(knobs["seed"], tf.int64) + offset, 2**31), tf.int32)
        budget, longest = tf.reduce_max(knobs["max_new_tokens"]), tf.reduce_max(length)
        ok = lambda condition: tf.reduce_all(condition)  # noqa: E731
        checks = [
            tf.debugging.assert_equal(ok(knobs["max_new_tokens"] > 0), True, message="max_new_tokens must be > 0"),
            tf.debugging.assert_less_equal(budget, self.limit, message=f"max_new_tokens must be <= {self.limit}"),
            tf.debugging.assert_equal(ok(length + knobs["max_new_tokens"] <= cfg.n_positions), True,
                                      message=f"prompt + max_new_tokens exceeds the context of {cfg.n_positions}"),
            tf.debugging.assert_equal(ok(knobs["temperature"] >= 0), True, message="temperature must be >= 0"),
            tf.debugging.assert_equal(ok(knobs["top_k"] >= 0), True, message="top_k must be >= 0 (0: off)"),
            tf.debugging.assert_equal(ok(tf.logical_and(knobs["top_p"] > 0, knobs["top_p"] <= 1)), True,
                                      message="top_p must be in (0, 1]"),
        ]
        with tf.control_dependencies(checks):
            budget = tf.identity(budget)
        sampling = Sampling(repetition_penalty=tf.ones([batch]), stop_ids=tf.constant([EOT_ID], tf.int32),
                            pad_id=tf.constant(self.pad_id), **knobs)
        # The cache holds the longest prompt and the largest budget of this batch, no more.
        new_slots = tf.zeros((batch, budget), tf.int32)
        prompt = Prompt(prompt.ids[:, -longest:], prompt.mask[:, -longest:])
        out = generate_loop(self.model, prompt, new_slots, sampling)
        return {"token_ids": out, "length": answer_lengths(out, sampling)}

    def generate_text(self, text, max_new_tokens, temperature, top_k, top_p, seed):
        # Bounded before tokenizing: the in-graph BPE costs time quadratic in the length of a word
        # (a 4 KB run without spaces takes seconds), and both checks are linear in the input.
        longest = lambda strings: tf.reduce_max(tf.concat([[0], tf.strings.length(strings)], 0))  # noqa: E731
        checks = [
            tf.debugging.assert_less_equal(longest(text), self.max_text_bytes,
                                           message=f"text is longer than {self.max_text_bytes} bytes"),
            tf.debugging.assert_less_equal(
                longest(tf.strings.split(text).flat_values), self.max_word_bytes,
                message=f"text has a run of more than {self.max_word_bytes} bytes without whitespace"),
        ]
        with tf.control_dependencies(checks):
            text = tf.identity(text)
        ragged = self.tokenizer(text)
        ids = tf.cast(ragged.to_tensor(default_value=self.pad_id), tf.int32)
        answer = self.generate(ids, tf.cast(ragged.row_lengths(), tf.int32), max_new_tokens, temperature, top_k,
                               top_p, seed)
        ends_with_stop = tf.gather(answer["token_ids"], tf.maximum(answer["length"] - 1, 0), batch_dims=1) == EOT_ID
        kept = answer["length"] - tf.cast(ends_with_stop, tf.int32)  # the stop token is not text
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
max_batch_size { value: 32 }
batch_timeout_micros { value: 20000 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 1 }
pad_variable_length_inputs: true
"""


def _next_version(base: str) -> int:
    versions = [int(d) for d in os.listdir(base) if d.isdigit()] if os.path.isdir(base) else []
    return max(versions, default=0) + 1


def export_saved_model(model: GPT2, base_dir: str, version: int | None = None, max_new_tokens_limit: int = 256,
                       max_text_bytes: int | None = None, max_word_bytes: int = 256) -> str:
    """Write a TF Serving model version `<base_dir>/<version>/` and return its path.

    `generate_text` refuses a text longer than `max_text_bytes` (default 8 bytes per position of the
    context) or with a run of more than `max_word_bytes` bytes without whitespace, before tokenizing it.
    """
    max_text_bytes = max_text_bytes or 8 * model.config.n_positions
    for name, value in (("max_new_tokens_limit", max_new_tokens_limit), ("max_text_bytes", max_text_bytes),
                        ("max_word_bytes", max_word_bytes), ("version", 1 if version is None else version)):
        if not is_integer(value) or value <= 0:  # TF Serving loads versions >= 1
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    module = _Serving(model, min(max_new_tokens_limit, model.config.n_positions), max_text_bytes, max_word_bytes)
    i32, f32 = tf.int32, tf.float32
    # Every input has a leading batch dimension, so TF Serving's batcher can merge requests.
    ids_spec = tf.TensorSpec([None, None], i32, "token_ids")
    length_spec = tf.TensorSpec([None], i32, "length")
    settings = [tf.TensorSpec([None], dtype, name) for name, dtype in (
        ("max_new_tokens", i32), ("temperature", f32), ("top_k", i32), ("top_p", f32), ("seed", i32))]
    archive = keras.export.ExportArchive()
    # The endpoints' variables are saved because they use them; tracking the model as well would store every
    # weight a second time (as the Keras variable and as the TF variable under it).
    archive.track(module.tokenizer)  # its vocabulary lookup tables
    archive.add_endpoint("serving_default", module.logits, [ids_spec, length_spec])
    archive.add_endpoint("generate", module.generate, [ids_spec, length_spec, *settings])
    archive.add_endpoint("generate_text", module.generate_text, [tf.TensorSpec([None], tf.string, "text"), *settings])
    version = version or _next_version(base_dir)
    final_dir = os.path.join(base_dir, str(version))
    if os.path.exists(final_dir):
        raise FileExistsError(f"{final_dir} exists: choose another version")
    os.makedirs(base_dir, exist_ok=True)
    # Written aside and moved into place in one rename: TF Serving never sees half a version.
    with scatter_cache_writes():  # TF Serving runs graphs with XLA compilation off: no XLA-only op
        atomic_write(final_dir, lambda tmp: archive.write_out(tmp, verbose=False))  # the endpoints trace here
    batching = os.path.join(base_dir, "batching_parameters.txt")
    if not os.path.exists(batching):  # a file the user edited stays as it is
        atomic_write(batching, bytes_writer(BATCHING_PARAMETERS.encode()))
    return final_dir
