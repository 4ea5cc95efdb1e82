"""Deployment: SavedModel signatures for TF Serving, and LiteRT (TFLite) prefill/decode models.

SavedModel (`export_saved_model`) writes `<base>/<version>/` with three signatures:
  serving_default(token_ids, attention_mask)                       -> logits
  generate(token_ids, attention_mask, max_new_tokens, temperature,
           top_k, top_p, seed)                                     -> token_ids
  generate_text(text, max_new_tokens, temperature, top_k, top_p, seed) -> text
The tokenizer is in the graph (keras-hub's BytePairTokenizer, whose ops come from
tensorflow-text: `import tensorflow_text` before `tf.saved_model.load` outside TF Serving).

LiteRT (`export_litert`) writes a `.tflite` with two signatures an app drives token by token,
the KV cache passed in and out as state (batch 1, fixed `max_length`):
  prefill(token_ids [1, max_length] right-padded, length [])  -> logits [1, vocab], cache
  decode(token_id [1, 1], position [], cache)                  -> logits [1, vocab], cache
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tf_gpt2.generation import generate_loop
from tf_gpt2.model import GPT2
from tf_gpt2.tokenizer import EOT_ID, GPT2Tokenizer

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("fp32", "fp16", "int8")


def _positions(mask):
    return tf.maximum(tf.cumsum(mask, axis=1) - 1, 0)


def _left_align(ids, mask):
    """Move each row's tokens to the right end (left padding), as generation expects."""
    width = tf.shape(ids)[1]
    shift = width - tf.reduce_sum(mask, axis=1)
    index = tf.math.floormod(tf.range(width)[None, :] - shift[:, None], width)
    return tf.gather(ids, index, batch_dims=1), tf.gather(mask, index, batch_dims=1)


class _Serving:
    """The functions behind the SavedModel's signatures."""

    def __init__(self, model: GPT2, max_new_tokens_limit: int):
        self.model = model
        self.tokenizer = GPT2Tokenizer().tf_layer()
        self.tokenizer(tf.constant([""]))  # build it, so the export can track its lookup tables
        self.limit = max_new_tokens_limit
        self.pad_id = EOT_ID if EOT_ID < model.config.vocab_size else 0

    def logits(self, token_ids, attention_mask):
        return {"logits": self.model(token_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask))}

    def generate(self, token_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, seed):
        n_positions = self.model.config.n_positions
        longest = tf.reduce_max(tf.reduce_sum(attention_mask, axis=1))
        checks = [
            tf.debugging.assert_greater(longest, 0, message="prompt is empty"),
            tf.debugging.assert_positive(max_new_tokens, message="max_new_tokens must be > 0"),
            tf.debugging.assert_less_equal(max_new_tokens, self.limit, message=f"max_new_tokens must be <= {self.limit}"),
            tf.debugging.assert_less_equal(longest + max_new_tokens, n_positions,
                                           message=f"prompt + max_new_tokens exceeds the context of {n_positions}"),
            tf.debugging.assert_non_negative(temperature, message="temperature must be >= 0"),
            tf.debugging.assert_greater(top_p, 0.0, message="top_p must be in (0, 1]"),
            tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1]"),
        ]
        with tf.control_dependencies(checks):
            token_ids, attention_mask = _left_align(token_ids, attention_mask)
        batch = tf.shape(token_ids)[0]
        out = generate_loop(
            self.model, token_ids, attention_mask, tf.zeros((batch, self.limit), tf.int32), max_new_tokens,
            temperature, top_k, top_p, tf.constant(1.0), seed, tf.constant([EOT_ID], tf.int32), self.pad_id,
        )
        return {"token_ids": out[:, :max_new_tokens]}

    def generate_text(self, text, max_new_tokens, temperature, top_k, top_p, seed):
        ragged = self.tokenizer(text)
        ids = tf.cast(ragged.to_tensor(default_value=self.pad_id), tf.int32)
        mask = tf.sequence_mask(ragged.row_lengths(), tf.shape(ids)[1], dtype=tf.int32)
        out = self.generate(ids, mask, max_new_tokens, temperature, top_k, top_p, seed)["token_ids"]
        kept = tf.reduce_sum(tf.cast(tf.cumsum(tf.cast(out == EOT_ID, tf.int32), axis=1) == 0, tf.int32), axis=1)
        return {"text": self.tokenizer.detokenize(tf.RaggedTensor.from_tensor(out, lengths=kept))}


def _next_version(base: str) -> int:
    versions = [int(d) for d in os.listdir(base) if d.isdigit()] if os.path.isdir(base) else []
    return max(versions, default=0) + 1


def _publish(tmp_dir: str, final_dir: str) -> str:
    """Move a finished export into place in one rename, so a crash never leaves half an export."""
    os.makedirs(os.path.dirname(final_dir) or ".", exist_ok=True)
    os.replace(tmp_dir, final_dir)
    return final_dir


def export_saved_model(model: GPT2, base_dir: str, version: int | None = None, max_new_tokens_limit: int = 256) -> str:
    """Write a TF Serving model version `<base_dir>/<version>/` and return its path."""
    module = _Serving(model, min(max_new_tokens_limit, model.config.n_positions))
    i32, f32 = tf.int32, tf.float32
    ids_spec = tf.TensorSpec([None, None], i32, "token_ids")
    mask_spec = tf.TensorSpec([None, None], i32, "attention_mask")
    knobs = [tf.TensorSpec([], i32, "max_new_tokens"), tf.TensorSpec([], f32, "temperature"),
             tf.TensorSpec([], i32, "top_k"), tf.TensorSpec([], f32, "top_p"), tf.TensorSpec([], i32, "seed")]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(module.tokenizer)  # its vocabulary lookup tables
    archive.add_endpoint("serving_default", module.logits, [ids_spec, mask_spec])
    archive.add_endpoint("generate", module.generate, [ids_spec, mask_spec, *knobs])
    archive.add_endpoint("generate_text", module.generate_text, [tf.TensorSpec([None], tf.string, "text"), *knobs])
    version = version or _next_version(base_dir)
    final_dir = os.path.join(base_dir, str(version))
    if os.path.exists(final_dir):
        raise FileExistsError(f"{final_dir} exists: choose another version")
    os.makedirs(base_dir, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".export-", dir=base_dir)
    try:
        archive.write_out(tmp_dir, verbose=False)
        return _publish(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


# -- LiteRT -------------------------------------------------------------------------------------
class _OnDevice:
    def __init__(self, model: GPT2, max_length: int):
        self.model, self.max_length = model, max_length

    def prefill(self, token_ids, length):
        cache = self.model.init_cache(1, self.max_length)
        # Causal: the padding after `length` is never seen by the first `length` positions.
        logits, cache = self.model.call_with_cache(token_ids, cache, 0, logits_at=length - 1)
        return {"logits": logits, "cache": cache}

    def decode(self, token_id, position, cache):
        logits, cache = self.model.call_with_cache(token_id, cache, position, logits_at=0)
        return {"logits": logits, "cache": cache}


def litert_bytes(model: GPT2, max_length: int | None = None, quantize: str = "fp32") -> bytes:
    """Convert `model` to a LiteRT flatbuffer with `prefill` and `decode` signatures."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {QUANTIZATIONS}")
    cfg = model.config
    max_length = max_length or cfg.n_positions
    if not 0 < max_length <= cfg.n_positions:
        raise ValueError(f"max_length must be in [1, {cfg.n_positions}], got {max_length}")
    module = _OnDevice(model, max_length)
    cache_shape = (cfg.n_layer, 2, 1, cfg.n_head, max_length, cfg.head_dim)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("prefill", module.prefill, [
        tf.TensorSpec([1, max_length], tf.int32, "token_ids"), tf.TensorSpec([], tf.int32, "length")])
    archive.add_endpoint("decode", module.decode, [
        tf.TensorSpec([1, 1], tf.int32, "token_id"), tf.TensorSpec([], tf.int32, "position"),
        tf.TensorSpec(cache_shape, tf.float32, "cache")])
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["prefill", "decode"])
        if quantize != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8: dynamic-range weight quantization
        if quantize == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def export_litert(model: GPT2, path: str, max_length: int | None = None, quantize: str = "fp32") -> str:
    flatbuffer = litert_bytes(model, max_length, quantize)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(flatbuffer)
    os.replace(tmp, path)
    return path


class LiteRTGenerator:
    """Reference driver for a LiteRT export: the loop a phone app runs.

    Example:
    >>> gen = LiteRTGenerator("gpt2.tflite")            # doctest: +SKIP
    >>> gen.generate([464, 3290], max_new_tokens=8)     # doctest: +SKIP
    """

    def __init__(self, path_or_bytes: str | bytes, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        source = {"model_content": path_or_bytes} if isinstance(path_or_bytes, bytes) else {"model_path": path_or_bytes}
        self.interpreter = Interpreter(**source, num_threads=num_threads)  # None: LiteRT's default
        self.prefill = self.interpreter.get_signature_runner("prefill")
        self.decode = self.interpreter.get_signature_runner("decode")
        self.max_length = int(self.prefill.get_input_details()["token_ids"]["shape"][1])

    def generate(self, prompt: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] = ()) -> list[int]:
        """Greedy continuation of `prompt`."""
        if not prompt:
            raise ValueError("prompt is empty")
        if len(prompt) + max_new_tokens > self.max_length:
            raise ValueError(f"prompt + max_new_tokens exceeds the exported max_length {self.max_length}")
        ids = np.zeros((1, self.max_length), np.int32)
        ids[0, : len(prompt)] = prompt
        out = self.prefill(token_ids=ids, length=np.int32(len(prompt)))
        tokens = []
        for position in range(len(prompt), len(prompt) + max_new_tokens):
            token = int(np.argmax(out["logits"][0]))
            tokens.append(token)
            if token in stop_ids or position == len(prompt) + max_new_tokens - 1:
                break
            out = self.decode(token_id=np.array([[token]], np.int32), position=np.int32(position), cache=out["cache"])
        return tokens
