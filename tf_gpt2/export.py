"""Deployment to TF Serving: a SavedModel with logits, generation and text-in/text-out signatures.

SavedModel (`export_saved_model`) writes `<base>/<version>/` with three signatures:
  serving_default(token_ids, attention_mask)                       -> logits
  generate(token_ids, attention_mask, max_new_tokens, temperature,
           top_k, top_p, seed)                                     -> token_ids
  generate_text(text, max_new_tokens, temperature, top_k, top_p, seed) -> text
The tokenizer is in the graph (keras-hub's BytePairTokenizer, whose ops come from
tensorflow-text: `import tensorflow_text` before `tf.saved_model.load` outside TF Serving).
Phones and other devices: see `tf_gpt2.litert`.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tf_gpt2.files import atomic_write
from tf_gpt2.generation import Prompt, Sampling, generate_loop, pad_id, positions_from_mask
from tf_gpt2.model import GPT2
from tf_gpt2.tokenizer import EOT_ID, GPT2Tokenizer

def _left_align(ids, mask):
    """Move each row's tokens to the right end (left padding), as generation expects."""
    width = tf.shape(ids)[1]
    shift = width - tf.reduce_sum(mask, axis=1)
    index = tf.math.floormod(tf.range(width)[None, :] - shift[:, None], width)
    return tf.gather(ids, index, batch_dims=1), tf.gather(mask, index, batch_dims=1)


def _prompt_checks(token_ids, attention_mask, vocab_size: int) -> list:
    """In-graph checks of a served prompt: a served model gets no eager Python validation in front of it."""
    valid = tf.logical_and(attention_mask >= 0, attention_mask <= 1)
    return [
        tf.debugging.assert_equal(tf.shape(token_ids), tf.shape(attention_mask),
                                  message="token_ids and attention_mask must have the same shape"),
        tf.debugging.assert_non_negative(token_ids, message="token ids must be >= 0"),
        tf.debugging.assert_less(token_ids, vocab_size, message=f"token ids must be < {vocab_size} (vocab_size)"),
        tf.debugging.assert_equal(tf.reduce_all(valid), True, message="attention_mask values must be 0 or 1"),
        tf.debugging.assert_equal(  # 1s then 0s: the first column is 1 and the mask never rises
            tf.reduce_all(tf.logical_and(attention_mask[:, :1] == 1, attention_mask[:, 1:] <= attention_mask[:, :-1])),
            True, message="every attention_mask row must be 1s followed by 0s (right padding, at least one token)"),
    ]


class _Serving:
    """The functions behind the SavedModel's signatures."""

    def __init__(self, model: GPT2, max_new_tokens_limit: int, max_text_bytes: int, max_word_bytes: int):
        self.model = model
        self.max_text_bytes, self.max_word_bytes = max_text_bytes, max_word_bytes
        self.tokenizer = GPT2Tokenizer().tf_layer()
        self.tokenizer(tf.constant([""]))  # build it, so the export can track its lookup tables
        self.limit = max_new_tokens_limit
        self.pad_id = pad_id(model.config)

    def logits(self, token_ids, attention_mask):
        with tf.control_dependencies(_prompt_checks(token_ids, attention_mask, self.model.config.vocab_size)):
            token_ids, attention_mask = tf.identity(token_ids), tf.identity(attention_mask)  # checked first
        return {"logits": self.model(token_ids, attention_mask=attention_mask, position_ids=positions_from_mask(attention_mask))}

    def generate(self, token_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, seed):
        n_positions = self.model.config.n_positions
        longest = tf.reduce_max(tf.reduce_sum(attention_mask, axis=1))
        checks = _prompt_checks(token_ids, attention_mask, self.model.config.vocab_size) + [
            tf.debugging.assert_greater(longest, 0, message="prompt is empty"),
            tf.debugging.assert_positive(max_new_tokens, message="max_new_tokens must be > 0"),
            tf.debugging.assert_less_equal(max_new_tokens, self.limit, message=f"max_new_tokens must be <= {self.limit}"),
            tf.debugging.assert_less_equal(longest + max_new_tokens, n_positions,
                                           message=f"prompt + max_new_tokens exceeds the context of {n_positions}"),
            tf.debugging.assert_non_negative(temperature, message="temperature must be >= 0"),
            tf.debugging.assert_non_negative(top_k, message="top_k must be >= 0 (0: off)"),
            tf.debugging.assert_greater(top_p, 0.0, message="top_p must be in (0, 1]"),
            tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1]"),
        ]
        with tf.control_dependencies(checks):
            token_ids, attention_mask = _left_align(token_ids, attention_mask)
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=tf.constant(1.0),
                            seed=seed, stop_ids=tf.constant([EOT_ID], tf.int32), pad_id=tf.constant(self.pad_id))
        new_slots = tf.zeros((tf.shape(token_ids)[0], self.limit), tf.int32)
        out = generate_loop(self.model, Prompt(token_ids, attention_mask), new_slots, max_new_tokens, sampling)
        return {"token_ids": out[:, :max_new_tokens]}

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
        mask = tf.sequence_mask(ragged.row_lengths(), tf.shape(ids)[1], dtype=tf.int32)
        out = self.generate(ids, mask, max_new_tokens, temperature, top_k, top_p, seed)["token_ids"]
        kept = tf.reduce_sum(tf.cast(tf.cumsum(tf.cast(out == EOT_ID, tf.int32), axis=1) == 0, tf.int32), axis=1)
        return {"text": self.tokenizer.detokenize(tf.RaggedTensor.from_tensor(out, lengths=kept))}


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
                        ("max_word_bytes", max_word_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    module = _Serving(model, min(max_new_tokens_limit, model.config.n_positions), max_text_bytes, max_word_bytes)
    i32, f32 = tf.int32, tf.float32
    ids_spec = tf.TensorSpec([None, None], i32, "token_ids")
    mask_spec = tf.TensorSpec([None, None], i32, "attention_mask")
    settings = [tf.TensorSpec([], i32, "max_new_tokens"), tf.TensorSpec([], f32, "temperature"),
             tf.TensorSpec([], i32, "top_k"), tf.TensorSpec([], f32, "top_p"), tf.TensorSpec([], i32, "seed")]
    archive = keras.export.ExportArchive()
    # The endpoints' variables are saved because they use them; tracking the model as well would store every
    # weight a second time (as the Keras variable and as the TF variable under it).
    archive.track(module.tokenizer)  # its vocabulary lookup tables
    archive.add_endpoint("serving_default", module.logits, [ids_spec, mask_spec])
    archive.add_endpoint("generate", module.generate, [ids_spec, mask_spec, *settings])
    archive.add_endpoint("generate_text", module.generate_text, [tf.TensorSpec([None], tf.string, "text"), *settings])
    version = version or _next_version(base_dir)
    final_dir = os.path.join(base_dir, str(version))
    if os.path.exists(final_dir):
        raise FileExistsError(f"{final_dir} exists: choose another version")
    os.makedirs(base_dir, exist_ok=True)
    # Written aside and moved into place in one rename: TF Serving never sees half a version.
    atomic_write(final_dir, lambda tmp: archive.write_out(tmp, verbose=False))
    return final_dir
