"""On-device models: one LiteRT (TFLite) file in the LiteRT-LM contract, and its `.litertlm` package.

The `.tflite` has the signatures that Google's on-device LLM runtime, LiteRT-LM, drives (batch 1, a
fixed cache of C = `cache_length` positions):

  prefill_<T>(tokens [1, T], input_pos [T], mask [1, 1, T, C], kv_cache_k_<i>, kv_cache_v_<i>, ...)
      -> kv_cache_k_<i>, kv_cache_v_<i>, ...            one signature per prefill length T
  decode(tokens [1, 1], input_pos [1], mask [1, 1, 1, C], kv_cache_k_<i>, kv_cache_v_<i>, ...)
      -> logits [1, 1, vocab], kv_cache_k_<i>, kv_cache_v_<i>, ...

Each layer i has a key and a value cache, float32 [1, n_head, C, head_dim]; a call writes its entries at
`input_pos[0]` onwards and returns the whole updated cache. `mask` is added to the attention scores: 0
where a key is visible, a large negative number where it is not. The same file runs in LiteRT-LM
(`export_litertlm` packs it with the GPT-2 tokenizer and the runtime's metadata) and in the plain LiteRT
interpreter (`LiteRTGenerator`: the loop an app runs when it drives the model itself).
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_gpt2.checks import checked_stop_ids, is_integer, require_tensorflow
from tf_gpt2.files import (
    atomic_write,
    folders_for,
    nearest_existing,
    refuse_replacing_another_kind,
    work_dir,
    write_file,
)
from tf_gpt2.formats import MODEL_FILE_SUFFIXES, QUANTIZATIONS
from tf_gpt2.generation import refuse_non_finite
from tf_gpt2.layers import causal_mask
from tf_gpt2.model import GPT2
from tf_gpt2.tokenizer import EOT_ID, VOCAB_SIZE, checked_ids, hf_tokenizer_json

# What LiteRT-LM writes into `mask` for a hidden key (finite: -inf would turn a fully masked row into NaN).
MASKED = float(-0.7 * np.finfo(np.float32).max)


def default_prefill_lengths(cache_length: int) -> tuple[int, ...]:
    """Prefill chunk lengths for a cache: 8, 32 and 128 where they fit in a quarter of it (else 1)."""
    return tuple(t for t in (8, 32, 128) if t <= cache_length // 4) or (1,)


def check_quantization(quantize: str) -> None:
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {QUANTIZATIONS}")


def _is_litert_lm_placeholder(length: int) -> bool:
    """LiteRT-LM reads a dimension that is a prime above 10 as a placeholder it resizes at load time (a "magic
    number": runtime/executor/magic_number_configs_helper.cc in LiteRT-LM): a prefill signature of that length then
    fails to run, and a cache of that length is shrunk to the token budget."""
    return length > 10 and all(length % d for d in range(2, int(length**0.5) + 1))


def _check_litert_lm_options(cache_length: int, prefill_lengths: tuple[int, ...], n_positions: int) -> int:
    """The token budget of a `.litertlm` of these settings (for a model of `n_positions`), refused where LiteRT-LM
    could not run a prompt."""
    if _is_litert_lm_placeholder(cache_length):  # (the runtime shrank the cache to the token budget, and prefill
        # chunks padded past it then failed)
        raise ValueError(f"cache_length {cache_length} is a prime above 10, which LiteRT-LM takes for a placeholder "
                         f"to resize: its cache would not be {cache_length}; use {cache_length - 1}")
    placeholders = [t for t in prefill_lengths if _is_litert_lm_placeholder(t)]
    if placeholders:
        raise ValueError(f"prefill length {placeholders[0]} is a prime above 10, which LiteRT-LM takes for a "
                         f"placeholder to resize: its prefill would fail; use {placeholders[0] - 1} or "
                         f"{placeholders[0] + 1}")
    budget = cache_length - (max(prefill_lengths) - 1)
    if budget < 3:
        enough, shorter = max(prefill_lengths) + 2, cache_length - 2  # (neither a placeholder)
        while _is_litert_lm_placeholder(enough):
            enough += 1
        while _is_litert_lm_placeholder(shorter):
            shorter -= 1
        remedies = [f"a cache_length of {enough} or more"] * (enough <= n_positions) + \
            [f"prefill lengths of at most {shorter}"] * (shorter >= 1)
        raise ValueError(f"cache_length {cache_length} with prefill length {max(prefill_lengths)} leaves LiteRT-LM "
                         f"{budget} token(s) (cache_length - (largest prefill length - 1)): its start token, one "
                         "prompt token and one new token need 3; " + (f"use {', or '.join(remedies)}" if remedies else
                         f"the model's {n_positions} positions cannot hold them"))
    return budget


def _check_options(model: GPT2, cache_length: int | None, prefill_lengths: Sequence[int] | None,
                   quantize: str) -> tuple[int, tuple[int, ...]]:
    check_quantization(quantize)
    if getattr(model, "quantization", None):
        raise ValueError(f"this model is already quantized with Keras ({model.quantization}): export the float "
                         "model with quantize='int8' (--quantize int8), LiteRT's own int8 for phones")
    n_positions = model.config.n_positions
    cache_length = n_positions if cache_length is None else cache_length
    if not is_integer(cache_length) or not 0 < cache_length <= n_positions:
        raise ValueError(f"cache_length must be an integer in [1, {n_positions}] (n_positions), got {cache_length!r}")
    if prefill_lengths is not None and (isinstance(prefill_lengths, (str, bytes))
                                        or not isinstance(prefill_lengths, Iterable)):  # (8 failed in tuple())
        raise ValueError(f"prefill_lengths must be a list of positive integers, got {prefill_lengths!r}")
    lengths = default_prefill_lengths(cache_length) if prefill_lengths is None else tuple(prefill_lengths)
    if not lengths or any(not is_integer(t) or t <= 0 for t in lengths):
        raise ValueError(f"prefill_lengths must be positive integers, got {prefill_lengths!r}")
    if len(set(lengths)) != len(lengths):
        raise ValueError(f"prefill_lengths gives a length more than once: {list(lengths)}; give each once")
    if max(lengths) > cache_length:
        raise ValueError(f"prefill length {max(lengths)} exceeds cache_length {cache_length}")
    return int(cache_length), tuple(sorted({int(t) for t in lengths}))


class _Signatures:
    """The functions behind the LiteRT-LM signatures, over the model's own cached forward pass."""

    def __init__(self, model: GPT2, vocab_end: int | None = None):
        self.model, self.vocab_end = model, vocab_end  # logits of the ids below vocab_end only (None: every id)

    def _run(self, tokens, input_pos, mask, caches, with_logits: bool):
        cache = [{"key": caches[2 * i], "value": caches[2 * i + 1]} for i in range(len(caches) // 2)]
        cfg, time, length = self.model.config, tf.shape(tokens)[1], tf.shape(caches[0])[2]
        # Ids and positions come from the runtime or an app, and a graph cannot raise: a call whose ids lie
        # outside the vocabulary or whose slots lie outside the cache runs nothing. It returns NaN logits and the
        # cache as it was (a clamped write would overwrite a conversation's first or last entries).
        valid = tf.reduce_all([tf.reduce_all((tokens >= 0) & (tokens < cfg.vocab_size)),
                               tf.reduce_all((input_pos >= 0) & (input_pos < cfg.n_positions)),
                               input_pos[0] >= 0, input_pos[0] + time <= length])

        # The runtime's mask is additive (0: visible, a large negative number such as MASKED: hidden); the model
        # takes the keys it may see. Made outside the cond: made inside it, LiteRT-LM 0.18 fails to bind its cache
        # buffers to the outputs.
        visible = tf.logical_and(causal_mask(time, length, input_pos[0]), mask > -1.0)

        def run():
            return self.model.call_with_cache(tokens, cache, input_pos[0], visible, position_ids=input_pos[None, :],
                                              logits_at=0)

        def refuse():
            return tf.fill([1, cfg.vocab_size], float("nan")), cache

        logits, cache = tf.cond(valid, run, refuse)
        outputs = {}
        for i, layer in enumerate(cache):
            outputs[f"kv_cache_k_{i}"], outputs[f"kv_cache_v_{i}"] = layer["key"], layer["value"]
        if with_logits:
            outputs["logits"] = logits[:, None, :self.vocab_end]
        return outputs

    def prefill(self, tokens, input_pos, mask, *caches):
        return self._run(tokens, input_pos, mask, caches, with_logits=False)

    def decode(self, tokens, input_pos, mask, *caches):
        return self._run(tokens, input_pos, mask, caches, with_logits=True)


def _specs(model: GPT2, time: int, cache_length: int) -> list[tf.TensorSpec]:
    cfg = model.config
    cache_shape = [1, cfg.n_head, cache_length, cfg.head_dim]
    specs = [tf.TensorSpec([1, time], tf.int32, "tokens"), tf.TensorSpec([time], tf.int32, "input_pos"),
             tf.TensorSpec([1, 1, time, cache_length], tf.float32, "mask")]
    for i in range(cfg.n_layer):
        specs += [tf.TensorSpec(cache_shape, tf.float32, f"kv_cache_k_{i}"),
                  tf.TensorSpec(cache_shape, tf.float32, f"kv_cache_v_{i}")]
    return specs


def litert_bytes(model: GPT2, cache_length: int | None = None, prefill_lengths: Sequence[int] | None = None,
                 quantize: str = "fp32", vocab_end: int | None = None) -> bytes:
    """Convert `model` to a LiteRT flatbuffer with `prefill_<T>` and `decode` signatures (see the module doc).

    `quantize`: "fp32", "fp16" (weights stored as float16) or "int8" (dynamic-range: int8 weights, int8
    matmuls with activations quantized on the fly; LiteRT's recommended CPU recipe). `vocab_end`: `decode` gives the
    logits of the ids below it only (a vocabulary wider than its tokenizer's: the runtime never chooses the rest).
    """
    require_tensorflow("a LiteRT export")
    cache_length, prefill_lengths = _check_options(model, cache_length, prefill_lengths, quantize)
    model = model.with_dtype("float32")  # on-device numerics are float32 (or quantized from it)
    signatures = _Signatures(model, vocab_end)
    archive = keras.export.ExportArchive()
    archive.track(model)
    names = [f"prefill_{t}" for t in prefill_lengths] + ["decode"]
    for t in prefill_lengths:
        archive.add_endpoint(f"prefill_{t}", signatures.prefill, _specs(model, t, cache_length))
    archive.add_endpoint("decode", signatures.decode, _specs(model, 1, cache_length))
    with work_dir("litert") as tmp, warnings.catch_warnings():
        # (a cache of 1 position: softmax over one key, which Keras takes for a mistake, "use a sigmoid instead?")
        warnings.filterwarnings("ignore", "You are using a softmax over axis", UserWarning)
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=names)
        if quantize != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def check_writable(path: str, kind: str) -> None:
    """Fail now, before a minutes-long conversion, if `path` cannot be written as a `.{kind}` file ("tflite",
    "litertlm"): its suffix names another format, a folder or a file of another kind is there, or its folder (or the
    nearest one there) cannot be written."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in MODEL_FILE_SUFFIXES and suffix != f".{kind}":  # (LiteRT-LM failed on it later: "Invalid magic
        # number"; a .keras so named failed to load)
        raise ValueError(f"{path} names a {suffix} file, but this export writes a .{kind}: give the path that suffix")
    if os.path.isdir(path):  # (said after the conversion's minutes, when the file could not replace it)
        raise IsADirectoryError(f"{path} is a folder: name the .{kind} file to write (in it, or elsewhere)")
    if kind == "litertlm" and not path.endswith(".litertlm"):  # (LiteRT-LM: "Unsupported or unknown file format")
        raise ValueError(f"{path}: LiteRT-LM opens a package by its name's ending, .litertlm in lower case: give the "
                         "path that ending")
    refuse_replacing_another_kind(path, kind)
    existing = nearest_existing(os.path.dirname(os.path.abspath(path)))  # (its folders are made when it is written)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"cannot write {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"cannot write to {existing}: the export would fail after converting")


def _write_converted(path: str, write: Callable[[str], None]) -> str:
    """`write(tmp)` (it converts, then writes) atomically at `path`, in folders made for it that a failure removes."""
    with folders_for(path):
        atomic_write(path, write)
    return path


def export_litert(model: GPT2, path: str, cache_length: int | None = None,
                  prefill_lengths: Sequence[int] | None = None, quantize: str = "fp32") -> str:
    """Write the `.tflite` (LiteRT-LM contract) to `path`, atomically, and return `path`. A path with `.litertlm`'s
    suffix, or a file there that is no `.tflite`, is refused."""
    path = os.fspath(path)
    cache_length, prefill_lengths = _check_options(model, cache_length, prefill_lengths, quantize)  # (an iterator:
    check_writable(path, "tflite")                                                                 # read once)

    return _write_converted(path, lambda tmp: write_file(tmp, litert_bytes(model, cache_length, prefill_lengths,
                                                                           quantize)))


def token_budget(model: GPT2, cache_length: int | None = None, prefill_lengths: Sequence[int] | None = None) -> int:
    """The tokens a `.litertlm` of these settings holds in a conversation (LiteRT-LM's `max_num_tokens`): the cache
    less the largest prefill length but one, since a padded prefill chunk must still fit in the cache. Settings that
    `export_litertlm` refuses are refused here too."""
    return _check_litert_lm_options(*_check_options(model, cache_length, prefill_lengths, QUANTIZATIONS[0]),
                                    model.config.n_positions)


def _llm_metadata(max_num_tokens: int) -> bytes:
    """LiteRT-LM's LlmMetadata: GPT-2's start and stop token, the token budget, a greedy sampler."""
    from litert_lm_builder.runtime.proto import llm_metadata_pb2, sampler_params_pb2

    metadata = llm_metadata_pb2.LlmMetadata(max_num_tokens=max_num_tokens)
    metadata.start_token.token_ids.ids.append(EOT_ID)
    metadata.stop_tokens.add().token_ids.ids.append(EOT_ID)
    metadata.llm_model_type.generic_model.SetInParent()
    # The CPU sampler implements TOP_P; k = 1 makes it greedy (an app sets its own per session).
    metadata.sampler_params.CopyFrom(sampler_params_pb2.SamplerParameters(
        type=sampler_params_pb2.SamplerParameters.TOP_P, k=1, p=1.0, temperature=1.0, seed=0))
    return metadata.SerializeToString()


def export_litertlm(model: GPT2, path: str, cache_length: int | None = None,
                    prefill_lengths: Sequence[int] | None = None, quantize: str = "fp32") -> str:
    """Write a `.litertlm` for LiteRT-LM: the `.tflite` above, GPT-2's `tokenizer.json` and the LLM metadata.

    The runtime starts a conversation with `<|endoftext|>` (GPT-2's document separator, as in training),
    stops at it, and holds at most `cache_length - (max(prefill_lengths) - 1)` tokens: a padded prefill
    chunk must still fit in the cache. A model of more ids than GPT-2's (a converted nanoGPT checkpoint's 50,304)
    writes GPT-2's ids only, as `generate` does from text: its `decode` gives the logits of those alone. A path with
    `.tflite`'s suffix, or a file there that is no `.litertlm`, is refused.

    Example:
    >>> model = GPT2(GPT2Config.from_preset("gpt2-tiny"))                # doctest: +SKIP
    >>> export_litertlm(model, "gpt2-tiny.litertlm", quantize="int8")     # doctest: +SKIP
    """
    try:
        from litert_lm_builder import LitertLmFileBuilder, TfLiteModelType
    except ImportError as e:
        raise ImportError(f"{e.name} is missing: pip install \"tf_gpt2[litert]\" (LiteRT-LM's builder)") from e
    ids = model.config.vocab_size
    if model.config.characters or ids < VOCAB_SIZE:
        kind = "a character model's" if model.config.characters else "fewer ids than GPT-2's"
        raise ValueError(f"a .litertlm carries the GPT-2 BPE tokenizer ({VOCAB_SIZE} tokens), but this model has {ids} "
                         f"({kind}), which that tokenizer cannot read or write: export a plain .tflite (--format "
                         "tflite) and drive it with your own tokenizer")
    cache_length, prefill_lengths = _check_options(model, cache_length, prefill_lengths, quantize)
    budget = _check_litert_lm_options(cache_length, prefill_lengths, model.config.n_positions)
    path = os.fspath(path)
    check_writable(path, "litertlm")

    def write(tmp: str) -> None:
        parts = {"model.tflite": litert_bytes(model, cache_length, prefill_lengths, quantize,
                                              vocab_end=VOCAB_SIZE if ids > VOCAB_SIZE else None),
                 "tokenizer.json": hf_tokenizer_json().encode("utf-8"),
                 "metadata.pb": _llm_metadata(budget)}
        with work_dir("litertlm") as folder:
            files = {name: os.path.join(folder, name) for name in parts}
            for name, data in parts.items():
                write_file(files[name], data)
            builder = LitertLmFileBuilder()
            builder.add_tflite_model(files["model.tflite"], TfLiteModelType.PREFILL_DECODE)
            builder.add_hf_tokenizer(files["tokenizer.json"])
            builder.add_llm_metadata(files["metadata.pb"])
            with open(tmp, "wb") as f:
                builder.build(f)
    return _write_converted(path, write)


class LiteRTGenerator:
    """Reference driver for the on-device model in the plain LiteRT interpreter: the loop an app runs.

    It keeps the KV cache and the next position; `feed` appends tokens (prefill chunks, then one decode
    step for the last token) and returns the logits that predict the next one. Bad input (an empty or
    out-of-vocabulary prompt, a position past the cache) raises before anything runs, so the cache is
    never left half-updated.

    Example:
    >>> gen = LiteRTGenerator("gpt2.tflite", num_threads=2)      # doctest: +SKIP
    >>> gen.generate([464, 3290], max_new_tokens=8)              # doctest: +SKIP
    """

    def __init__(self, path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview,
                 num_threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise ImportError(f"{e.name} is missing: pip install \"tf_gpt2[litert]\" (the LiteRT interpreter)") from e

        given_bytes = isinstance(path_or_bytes, (bytes, bytearray, memoryview))
        if not given_bytes and not isinstance(path_or_bytes, (str, os.PathLike)):
            raise TypeError(f"LiteRTGenerator expects a .tflite path or its bytes, got {type(path_or_bytes).__name__}")
        source = {"model_content": bytes(path_or_bytes)} if given_bytes else {"model_path": os.fspath(path_or_bytes)}
        if given_bytes and not source["model_content"]:
            raise ValueError("the model given as bytes is empty")
        if num_threads is not None and not (is_integer(num_threads) and num_threads >= 1):  # (else named as the model)
            raise ValueError(f"num_threads must be a positive integer or None (LiteRT's default), got {num_threads!r}")
        named = "the model given as bytes" if given_bytes else str(path_or_bytes)
        if not given_bytes and not os.path.isfile(path_or_bytes):
            raise FileNotFoundError(f"{named} is no file" + (" (a folder)" if os.path.isdir(named) else ""))
        try:
            self.interpreter = Interpreter(**source, num_threads=None if num_threads is None else int(num_threads))
        except ValueError as e:  # ("The model is not a valid Flatbuffer buffer": a .litertlm, say)
            content = source.get("model_content", b"")
            names_a_file = 0 < len(content) < 4096 and os.path.isfile(content)
            raise ValueError(f"{named} is no .tflite LiteRT reads ({e})" + (
                f"; they name the file {os.fsdecode(content)}: give its path as a str to read it"
                if names_a_file else "")) from None
        names = self.interpreter.get_signature_list()
        prefills = [n for n in names if re.fullmatch(r"prefill_[1-9][0-9]*", n)]
        if "decode" not in names or not prefills or "mask" not in names["decode"]["inputs"]:
            raise ValueError(f"{named} is not a tf_gpt2 on-device model: signatures {sorted(names)}, expected "
                             "decode (with a mask input) and prefill_<T>")
        self._decode = self.interpreter.get_signature_runner("decode")
        self._prefill = {int(n.split("_")[1]): self.interpreter.get_signature_runner(n) for n in prefills}
        inputs = self._decode.get_input_details()
        self.cache_length = int(inputs["mask"]["shape"][-1])
        self.vocab_size = int(self._decode.get_output_details()["logits"]["shape"][-1])
        self._cache_shapes = {n: tuple(d["shape"]) for n, d in inputs.items() if n.startswith("kv_cache_")}
        self.reset()

    @property
    def prefill_lengths(self) -> list[int]:
        return sorted(self._prefill)

    def reset(self) -> None:
        """Forget the conversation: an empty cache, next position 0."""
        self.cache = {name: np.zeros(shape, np.float32) for name, shape in self._cache_shapes.items()}
        self.position = 0

    def _run(self, runner, tokens: list[int], pad_to: int) -> dict:
        """Run `tokens` at the next positions (right-padded to `pad_to` with token 0 at position 0)."""
        n = len(tokens)
        positions = np.zeros(pad_to, np.int32)
        positions[:n] = np.arange(self.position, self.position + n)
        mask = np.where(np.arange(self.cache_length)[None, :] <= positions[:, None], 0.0, MASKED)
        ids = np.zeros((1, pad_to), np.int32)
        ids[0, :n] = tokens
        out = runner(tokens=ids, input_pos=positions, mask=mask[None, None].astype(np.float32), **self.cache)
        self.cache = {name: out[name] for name in self.cache}
        self.position += n
        return out

    def _chunk(self, remaining: int) -> int | None:
        """The prefill length for the next chunk: the longest one filled completely, else the shortest
        one that fits in the cache padded; None when only single decode steps fit."""
        full = [t for t in self.prefill_lengths if t <= remaining]
        if full:
            return full[-1]
        padded = [t for t in self.prefill_lengths if self.position + t <= self.cache_length]
        return padded[0] if padded else None

    def _checked(self, tokens: Sequence[int], position: int) -> list[int]:
        """`tokens` as ints, if they are ids of this model (integers: a float or a bool is refused, not rounded) and
        fit in the cache at `position`."""
        rows = isinstance(tokens, (list, tuple)) and any(isinstance(t, (list, tuple)) or np.ndim(t) for t in tokens)
        if rows or hasattr(tokens, "__array__") and np.ndim(tokens) > 1:
            raise ValueError(f"LiteRTGenerator runs one sequence (its cache holds one): give one list of ids, not a "
                             f"batch of {len(tokens)} rows")
        tokens = checked_ids(tokens, self.vocab_size)
        if not tokens:
            raise ValueError("no tokens to feed: give at least one")
        if position + len(tokens) > self.cache_length:
            raise ValueError(f"{len(tokens)} tokens at position {position} exceed the exported cache of "
                             f"{self.cache_length} positions")
        return tokens

    def feed(self, tokens: Sequence[int]) -> np.ndarray:
        """Append `tokens` to the conversation; return the float32 [vocab] logits after the last one."""
        tokens = self._checked(tokens, self.position)
        head, last = tokens[:-1], tokens[-1]
        while head:
            t = self._chunk(len(head))
            if t is None:
                self._run(self._decode, head[:1], 1)
                head = head[1:]
            else:
                self._run(self._prefill[t], head[:t], t)
                head = head[t:]
        return self._run(self._decode, [last], 1)["logits"][0, 0]

    def generate(self, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()) -> list[int]:
        """Greedy continuation of `prompt` from an empty cache; stops after a token in `stop_ids`. The last token
        returned is not yet in the cache: to go on, `feed` it first (with what follows)."""
        if not is_integer(max_new_tokens) or max_new_tokens <= 0:  # (True is no count)
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        prompt = self._checked(prompt, 0)  # before the conversation is reset: a refused call keeps it
        stop_ids = checked_stop_ids(stop_ids, self.vocab_size)
        if len(prompt) + max_new_tokens - 1 > self.cache_length:  # (the last token is returned, never cached)
            raise ValueError(f"the prompt's {len(prompt)} tokens + max_new_tokens {max_new_tokens} - 1 exceed the "
                             f"exported cache of {self.cache_length} positions: at most "
                             f"{self.cache_length + 1 - len(prompt)} new tokens after this prompt")
        self.reset()
        logits, tokens = self.feed(prompt), []
        while True:
            refuse_non_finite(np.array([np.isfinite(logits).all()]))  # argmax(NaN) is no choice
            tokens.append(int(np.argmax(logits)))
            if tokens[-1] in stop_ids or len(tokens) == max_new_tokens:
                return tokens
            logits = self.feed(tokens[-1:])
