"""GPT2: token + position embeddings, a stack of TransformerBlocks, a final LayerNorm and a
language-model head tied to the token embedding."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any, Callable, Iterator

import keras
from keras import ops

from tf_gpt2.checks import (
    CheckedLoops,
    check_aligned,
    check_losses_and_metrics,
    check_optimizer_fits,
    check_positions,
    check_token_ids,
    refuse_litert_of_any_length,
)
from tf_gpt2.config import GPT2Config
from tf_gpt2.files import atomic_write
from tf_gpt2.garbage import collected_once
from tf_gpt2.layers import TransformerBlock, causal_mask, new_buffer, recomputed
from tf_gpt2.variants import VariantBlock
from tf_gpt2.xla import changed


class TokenLoss(keras.losses.Loss):
    """Per-token loss values, already computed, reduced as Keras reduces a loss (weights, distribution scaling)."""

    def call(self, y_true, y_pred):
        return y_pred


def _is_logits_cross_entropy(loss) -> bool:
    """Keras' own `SparseCategoricalCrossentropy(from_logits=True)` (not a subclass, which may change its `call`),
    over the last axis, no class ignored. Its settings are read where the loss keeps them (`get_config` leaves `axis`
    out); where Keras keeps them elsewhere, the loss is left to Keras."""
    settings = getattr(loss, "_fn_kwargs", None) if type(loss) is keras.losses.SparseCategoricalCrossentropy else None
    return settings == {"from_logits": True, "ignore_class": None, "axis": -1}


def token_cross_entropy(logits, targets):
    """-log softmax(logits)[target] at each position: logsumexp(logits) - logits[target], in float32.

    The same values and gradients as `keras.losses.sparse_categorical_crossentropy(..., from_logits=True)`, with the
    gradient written out, softmax(logits) - onehot(target): the backward pass reads the logits once and writes one
    [batch, time, vocab] array, where the autodiff of log-softmax passes over that array several times. A target
    outside [0, vocab) gives a NaN loss and gradient, as TensorFlow's own loss does under XLA (a compiled gather would
    read a clamped or wrapped logit instead, and Keras' JAX loss gives 0); without XLA, TensorFlow's gather stops with
    an error naming a target past the vocabulary's end. `GPT2.compute_loss` reads a masked target (weight 0) as 0.

    Example:
    >>> import numpy as np
    >>> float(token_cross_entropy(np.zeros((1, 4), "float32"), np.array([2]))[0])  # uniform over 4: log 4
    1.3862943649291992
    """
    @ops.custom_gradient
    def cross_entropy(logits, targets):
        x = ops.cast(logits, "float32")
        lse = ops.logsumexp(x, axis=-1)
        in_vocab = ops.logical_and(targets >= 0, targets < x.shape[-1])

        def gradient(*args, upstream=None):  # the backends pass the upstream gradient positionally or by name
            upstream = args[0] if upstream is None else upstream
            softmax = ops.exp(x - lse[..., None])
            dlogits = ops.where(in_vocab[..., None], softmax - ops.one_hot(targets, x.shape[-1]), float("nan"))
            return ops.cast(dlogits * upstream[..., None], logits.dtype), None

        picked = ops.take_along_axis(x, targets[..., None], axis=-1)[..., 0]
        return ops.where(in_vocab, lse - picked, float("nan")), gradient

    return cross_entropy(logits, ops.cast(targets, "int32"))


@contextlib.contextmanager
def unsaid_by_tensorflow(said: str) -> Iterator[None]:
    """Within it, TensorFlow's log drops its lines that start with `said`."""
    logger = logging.getLogger("tensorflow")
    quiet = lambda record: not record.getMessage().startswith(said)  # noqa: E731
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@keras.saving.register_keras_serializable(package="tf_gpt2")
class GPT2(CheckedLoops, keras.Model):
    """GPT-2 language model.

    Args:
        config: a `GPT2Config` (or its dict form); defaults to the 124M "gpt2" shape.
        quantization: None for float weights; a `quantize` mode ("int8", ...) builds the model quantized so, with
            Keras' default settings for it, ready for a quantized model's weights to load into.

    Call arguments:
        token_ids: int [batch, time] token ids.
        attention_mask: optional int/bool [batch, time], 0 marks padding to ignore.
        position_ids: optional int [batch, time]; default 0..time-1. Left-padded rows need them as well as the
            mask (each token's index among its row's own, as `generate` gives them) to equal the unpadded rows.

    Returns float32 logits [batch, time, vocab_size].

    Example:
    >>> import numpy as np
    >>> model = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=100))
    >>> tuple(model(np.array([[1, 2, 3]])).shape)
    (1, 3, 100)
    """

    def __init__(self, config: GPT2Config | dict | None = None, quantization: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if config is None:
            config = GPT2Config()
        elif isinstance(config, dict):
            config = GPT2Config.from_dict(config)
        elif not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a GPT2Config or a dict, got {type(config).__name__}")
        self.config = cfg = config.fixed_copy()  # the model's own: changed, it would no longer describe the model
        self._own_cross_entropy = False  # set by `compile`
        init = keras.initializers.RandomNormal(stddev=cfg.initializer_range)
        policy = self.dtype_policy  # e.g. GPT2(cfg, dtype="mixed_bfloat16"); every sublayer gets it
        # The token embedding is also the LM head (tied weights): Keras' ReversibleEmbedding, reverse=True, in the
        # compute dtype on every path (an Embedding is not autocast, so left to itself the head of a mixed model
        # computes in float32 in eager calls and TensorFlow's compiled ones, and in bfloat16 in JAX's train step).
        self.wte = keras.layers.ReversibleEmbedding(cfg.padded_vocab_size, cfg.n_embd, embeddings_initializer=init,
                                                    name="wte", dtype=policy, reverse_dtype=policy.compute_dtype)
        self.wpe = keras.layers.Embedding(cfg.n_positions, cfg.n_embd, embeddings_initializer=init, name="wpe",
                                          dtype=policy)
        self.drop = keras.layers.Dropout(cfg.dropout_rate("embd_pdrop"), dtype=policy)
        variant = cfg.block_variant()  # {} for GPT-2 (post-LN or learned residual scales otherwise)
        Block = VariantBlock if variant else TransformerBlock
        self.h = [Block(n_embd=cfg.n_embd, n_head=cfg.n_head, n_layer=cfg.n_layer,
                        dropout=cfg.dropout_rate("resid_pdrop"), attention_dropout=cfg.dropout_rate("attn_pdrop"),
                        activation=cfg.activation, layer_norm_epsilon=cfg.layer_norm_epsilon,
                        initializer_range=cfg.initializer_range, **variant, name=f"h_{i}", dtype=policy)
                  for i in range(cfg.n_layer)]
        self.ln_f = keras.layers.LayerNormalization(epsilon=cfg.layer_norm_epsilon, name="ln_f", dtype=policy)
        self.build((None, None))  # create all weights now, so checkpoints load before a first call
        self.quantization, self._quantization_config = None, None
        self._head_in_loss = False  # True inside `train_step` with `config.loss_chunk`: `call` gives hidden states
        if quantization:  # a reloaded quantized model: make the quantized variables its weights load into
            self.quantize(quantization)

    def build(self, input_shape=None):
        if self.built:  # the weights are made in __init__: a later build((None, T)) has nothing to do
            return
        hidden = (None, None, self.config.n_embd)
        self.wte.build((None, None))
        self.wpe.build((None, None))
        for block in self.h:
            block.build(hidden)
        self.ln_f.build(hidden)
        self.built = True

    # -- the forward pass ------------------------------------------------------------------------
    def embed(self, token_ids, position_ids, training=None):
        """Token + position embeddings: the residual stream the blocks read and add to."""
        return self.drop(self.wte(token_ids) + self.wpe(position_ids), training=training)

    def _lm_head(self, x):
        """Tied LM head: the output projection reuses the token embedding matrix; float32 logits."""
        logits = self.wte(x, reverse=True)
        if self.config.padded_vocab_size != self.config.vocab_size:  # padding rows are not tokens
            logits = logits[..., : self.config.vocab_size]
        return ops.cast(logits, "float32")

    def call(self, token_ids, attention_mask=None, position_ids=None, training=None):
        check_token_ids(token_ids, self.config.vocab_size, self.config.n_positions)  # where ids enter, eagerly
        for name, aligned in (("attention_mask", attention_mask), ("position_ids", position_ids)):
            if aligned is not None:
                check_aligned(name, aligned, token_ids)
        check_positions(position_ids, 0, None, self.config.n_positions, None)
        if position_ids is None:
            position_ids = ops.arange(ops.shape(token_ids)[1], dtype="int32")[None, :]
        x = self.embed(token_ids, position_ids, training)
        time = ops.shape(token_ids)[1]
        visible = None if attention_mask is None else causal_mask(time, time, visible=attention_mask)  # None: causal
        for block in self.h:
            if training and self.config.remat:
                x = recomputed(block, x, visible)
            else:
                x, _ = block(x, visible=visible, training=training)
        x = self.ln_f(x)
        if training and self._head_in_loss:  # the loss applies the head, chunk by chunk (`compute_loss`)
            return x
        return self._lm_head(x)

    # -- the training loss ----------------------------------------------------------------------------
    def train_step(self, *args, **kwargs):
        """Keras' training step. With `config.loss_chunk`, `call` within it returns the final hidden states and
        `compute_loss` applies the head chunk by chunk; everywhere else (a loop of your own too) `call` gives logits."""
        self._head_in_loss = bool(self.config.loss_chunk)
        try:
            # TensorFlow logs that a tape watches an integer tensor: `keras.remat` watches every input of the
            # recomputed function, the dropout seeds `recomputed` hands it too (no gradient is taken of them), and it
            # said so five times, in lines that read as errors (traced here). Any integer watched here goes unsaid.
            with unsaid_by_tensorflow("The dtype of the watched tensor must be floating"):
                return super().train_step(*args, **kwargs)
        finally:
            self._head_in_loss = False

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, weighted_metrics=None, loss_weights=None,
                **kwargs):
        check_losses_and_metrics(loss, metrics, weighted_metrics)  # (a wrong objective or figure without a word)
        # Keras' sparse categorical cross-entropy from logits, unweighted: `compute_loss` computes it itself
        self._own_cross_entropy = _is_logits_cross_entropy(loss) and loss_weights is None
        if self.config.loss_chunk and (not self._own_cross_entropy or metrics or weighted_metrics):
            raise ValueError("GPT2Config.loss_chunk computes sparse categorical cross-entropy from logits itself, "
                             f"got loss={loss!r}, loss_weights={loss_weights!r}, "
                             f"metrics={metrics or weighted_metrics!r}: compile with "
                             "loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True) and no loss weights or "
                             "metrics, or use a model of loss_chunk 0: GPT2(dataclasses.replace(model.config, "
                             "loss_chunk=0)) given this one's weights (set_weights)")
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, weighted_metrics=weighted_metrics,
                        loss_weights=loss_weights, **kwargs)

    def get_compile_config(self):
        """Keras' compile settings, saved with the model; none for a model with LoRA adapters, which Keras saves
        merged into its kernels: its optimizer state would not fit the model that loads (every weight trainable)."""
        if any(getattr(layer, "lora_enabled", False) for layer in self._flatten_layers()):
            warnings.warn("a model with LoRA adapters is saved uncompiled, its adapters merged into its kernels (its "
                          "optimizer state would not fit): the model that loads has no adapters and trains whole; "
                          "call enable_lora on it again before compiling to go on with adapters, or resume its "
                          "training run", stacklevel=2)
            return {}
        return super().get_compile_config()

    def compile_from_config(self, config):
        """`keras.models.load_model` of a compiled model: compiled again through `compile` above, the optimizer built
        so that its saved state (step, moments) is read back, as Keras does for a model whose compile is its own."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' loss; its sparse categorical cross-entropy from logits (a language model's loss) computed by
        `token_cross_entropy`. With `config.loss_chunk` in `train_step`, the same cross-entropy from the final hidden
        states (`call` returns them there): head and loss over `loss_chunk` tokens at a time, each chunk recomputed in
        the backward pass, so the [batch, time, vocab] logits are never held."""
        if not self._own_cross_entropy:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        if not self._compile_loss.built:  # as Keras' loss builds itself on its first call: fit and evaluate check it
            self._compile_loss.build(y, y_pred)
        # [batch, time], or [batch, time, 1] as Keras' loss takes them too (of a rank unknown where a second fit
        # gave the other and Keras traced again with the shapes relaxed)
        targets = ops.cast(y, "int32")
        if getattr(targets.shape, "rank", 0) is None:  # (TensorFlow: a rank Keras left unknown, tracing again)
            targets = ops.reshape(targets, ops.shape(y_pred)[:2])
        elif len(targets.shape) == len(y_pred.shape):
            targets = ops.squeeze(targets, axis=-1)  # (and refuses any other last axis)
        if sample_weight is not None and len(sample_weight.shape) > 1:  # a weight per token: a masked token's target
            masked = ops.reshape(ops.cast(sample_weight, "float32") == 0, ops.shape(targets))  # may be a placeholder
            # (a bool mask, `y != -100`, compared with 0 failed on TensorFlow)
            targets = ops.where(masked, 0, targets)  # (as Hugging Face's -100): it counts as 0
        if training and self._head_in_loss:
            per_token = self._chunked_cross_entropy(y_pred, targets)
        else:
            per_token = token_cross_entropy(y_pred, targets)
        loss = TokenLoss(reduction=self.loss.reduction, dtype=self.loss.dtype)(targets, per_token, sample_weight)
        return loss + sum(self.losses) if self.losses else loss

    def _chunked_cross_entropy(self, hidden, targets):
        """Per-token cross-entropy from the final hidden states [batch, time, n_embd], `loss_chunk` positions at a
        time, each chunk's logits recomputed in the backward pass."""
        vocab, chunk, time = self.config.vocab_size, self.config.loss_chunk, hidden.shape[1]
        if time is None:
            raise ValueError("GPT2Config.loss_chunk needs the length of the training windows when the step is traced: "
                             "give the data a fixed sequence length (tf-gpt2's datasets have one)")
        table = ops.cast(self.wte.embeddings, hidden.dtype)  # the tied head, in the compute dtype as `wte` uses it

        def chunk_losses(i):  # [batch, chunk, n_embd] -> [batch, chunk]; the targets closed over (not differentiated)
            return lambda hidden, table: token_cross_entropy(ops.matmul(hidden, ops.transpose(table))[..., :vocab],
                                                             targets[:, i:i + chunk])

        return ops.concatenate([keras.remat(chunk_losses(i))(hidden[:, i:i + chunk], table)
                                for i in range(0, time, chunk)], axis=1)

    # -- the KV cache ----------------------------------------------------------------------------
    def init_cache(self, batch_size: int, max_length: int, dtype: str | None = None) -> list[dict]:
        """One `{"key", "value"}` dict per layer, each of zeros [batch, n_head, max_length, head_dim].

        Keeping every layer's keys and values as separate fixed-shape tensors lets a step update
        them in place, and maps one to one onto an on-device runtime's named cache buffers.
        """
        cfg = self.config
        shape = (batch_size, cfg.n_head, max_length, cfg.head_dim)
        dtype = dtype or self.compute_dtype
        return [{"key": new_buffer(shape, dtype), "value": new_buffer(shape, dtype)} for _ in range(cfg.n_layer)]

    def call_with_cache(self, token_ids, cache, cache_index, visible=None, position_ids=None, logits_at=None):
        """One decoding step: run `token_ids` at cache positions `cache_index...`.

        Returns `(logits, cache)`, with this step's keys/values written into the cache. `visible` is bool
        [batch or 1, 1, time, max_length], which cache slots each query sees (`layers.causal_mask` with the
        slots that hold tokens); default: every slot up to the query's own. `logits_at` (an index into
        `token_ids`' time axis) asks for that position's logits only, [batch, vocab]: a prefill needs just the
        last prompt position, and the LM head is the largest matmul of a step.
        """
        max_length = cache[0]["key"].shape[2]
        check_token_ids(token_ids, self.config.vocab_size, max_length or self.config.n_positions)
        if position_ids is not None:
            check_aligned("position_ids", position_ids, token_ids)
        check_positions(position_ids, cache_index, token_ids.shape[1], self.config.n_positions, max_length)
        if position_ids is None:
            position_ids = (ops.arange(ops.shape(token_ids)[1], dtype="int32") + ops.cast(cache_index, "int32"))[None]
        x = self.embed(token_ids, position_ids)
        if visible is None:
            visible = causal_mask(ops.shape(token_ids)[1], ops.shape(cache[0]["key"])[2], cache_index)
        new_cache = []
        for block, layer_cache in zip(self.h, cache):
            x, layer_cache = block(x, visible=visible, cache=layer_cache, cache_index=cache_index)
            new_cache.append(layer_cache)
        x = self.ln_f(x)
        if logits_at is not None:  # only one position's logits are wanted: skip the head's other rows
            x = ops.take(x, ops.cast(logits_at, "int32"), axis=1)
        return self._lm_head(x), new_cache

    # -- many devices (keras.distribution, JAX backend) -------------------------------------------
    @staticmethod
    def get_layout_map(device_mesh: Any, model_parallel_dim_name: str = "model",
                       data_parallel_dim_name: str = "batch") -> Any:
        """How `keras.distribution.ModelParallel` splits the weights over `device_mesh` (keras-hub's convention).

        Megatron's split on the model axis: the token embedding by vocabulary rows (the tied LM head's outputs),
        the column-parallel projections `c_attn` and `c_fc` by output features (and their biases), the
        row-parallel `attn/c_proj` and `mlp/c_proj` by input features. The other dimension of each of those
        matrices is split on the data axis, as keras-hub's backbones do (each data-parallel group holds a slice:
        ZeRO-3 style). LayerNorms, the position table and the row-parallel biases are replicated; the
        optimizer's moments follow their variables. JAX splits only evenly: pad the vocabulary to a multiple
        of the model axis (`GPT2Config(vocab_multiple=64)` makes GPT-2's 50257 rows 50304).

        Example (JAX backend):
        >>> devices = keras.distribution.list_devices()                      # doctest: +SKIP
        >>> mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), devices)  # doctest: +SKIP
        >>> layout_map = GPT2.get_layout_map(mesh)                            # doctest: +SKIP
        >>> distribution = keras.distribution.ModelParallel(layout_map=layout_map)  # doctest: +SKIP
        >>> with distribution.scope():                                        # doctest: +SKIP
        ...     model = GPT2(GPT2Config.from_preset("gpt2-xl"))
        """
        for name in (model_parallel_dim_name, data_parallel_dim_name):
            if name not in device_mesh.axis_names:
                raise ValueError(f"{name!r} is not an axis of the device mesh {tuple(device_mesh.axis_names)}")
        model, data = model_parallel_dim_name, data_parallel_dim_name
        layout = keras.distribution.LayoutMap(device_mesh)  # keys: regular expressions over whole variable paths
        layout[r".*/wte/embeddings"] = (model, data)
        layout[r".*/h_\d+/(attn/c_attn|mlp/c_fc)/kernel"] = (data, model)
        layout[r".*/h_\d+/(attn/c_attn|mlp/c_fc)/bias"] = (model,)
        layout[r".*/h_\d+/(attn|mlp)/c_proj/kernel"] = (model, data)
        return layout

    # -- generation, checkpoints -----------------------------------------------------------------
    def generate(self, prompt, max_new_tokens: int = 32, **kwargs) -> Any:
        """Continue `prompt` (text, a list of ids, or a batch of id lists). See `tf_gpt2.generation`."""
        from tf_gpt2.generation import generate

        return generate(self, prompt, max_new_tokens=max_new_tokens, **kwargs)

    @classmethod
    def from_pretrained(cls, source: Any, revision: str | None = None, **config_overrides: Any) -> "GPT2":
        """Load GPT-2 weights by name or from a path: a Hugging Face repo id (`"gpt2"`, `"org/name"`,
        `"hf://org/name"`, at `revision`: see `tf_gpt2.hub`), a keras-hub preset name (`"gpt2_base_en"`), a
        Hugging Face dir, an OpenAI TF checkpoint dir, a keras-hub GPT2Backbone (object or preset dir), or a
        `.keras` file. See `tf_gpt2.checkpoints`. `config_overrides` set GPT2Config fields the weights leave free
        (dropout, vocab_multiple, remat, loss_chunk); the shape and the arithmetic are the checkpoint's."""
        from tf_gpt2.checkpoints import load_pretrained

        return load_pretrained(cls, source, revision=revision, **config_overrides)

    def save(self, filepath: Any, overwrite: bool = True, zipped: bool | None = None, **kwargs: Any) -> None:
        """Keras' `save`; a `.keras` file on a local disk, overwritten without asking, is replaced whole or not at
        all: a failed or interrupted save keeps the file that was there."""
        path = os.fspath(filepath) if isinstance(filepath, (str, os.PathLike)) else ""  # (or a file object)
        if path.lower().endswith((".h5", ".hdf5")):  # (Keras' legacy format: written, it did not load back)
            raise ValueError(f"{path}: GPT2 saves as a .keras file, which `keras.models.load_model` reads back; a "
                             "legacy .h5 of it does not load (save_weights('x.weights.h5') keeps the weights alone)")
        in_place = not path.endswith(".keras") or "://" in path or zipped is False or not overwrite
        self._save_whole(filepath, path, in_place, "a model that does not load",
                         lambda target: super(GPT2, self).save(target, overwrite=overwrite, zipped=zipped, **kwargs))

    def save_weights(self, filepath: Any, overwrite: bool = True, **kwargs: Any) -> None:
        """Keras' `save_weights`, as `save` writes: LoRA adapters merged into their kernels in the weights' own
        dtype, no NaN written, a `.weights.h5` on a local disk replaced whole or not at all."""
        path = os.fspath(filepath) if isinstance(filepath, (str, os.PathLike)) else ""
        in_place = (not path.endswith(".weights.h5") or "://" in path or not overwrite
                    or kwargs.get("max_shard_size") is not None)  # (shards: a .weights.json and files beside it)
        self._save_whole(filepath, path, in_place, "weights that are not finite",
                         lambda target: super(GPT2, self).save_weights(target, overwrite=overwrite, **kwargs))

    def load_weights(self, filepath: Any, skip_mismatch: bool = False, **kwargs: Any) -> None:
        """Keras' `load_weights`; a local `.weights.h5` of a model of other shapes (more layers, another context) is
        refused naming them, unless `skip_mismatch`; LoRA adapters, which Keras zeroes, start afresh."""
        from tf_gpt2.checkpoints import refuse_other_shapes, restart_zeroed_adapters

        path = os.fspath(filepath) if isinstance(filepath, (str, os.PathLike)) else ""
        if path.endswith(".weights.h5") and os.path.isfile(path) and self.built and not skip_mismatch:
            refuse_other_shapes(self, path)
        super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        restart_zeroed_adapters(self, path or str(filepath))

    def _save_whole(self, filepath: Any, path: str, in_place: bool, written: str,
                    write: Callable[[Any], object]) -> None:
        """`write` this model's weights to `filepath` (through a staged copy of `path` unless `in_place`)."""
        from tf_gpt2.checkpoints import adapters_merged_as_stored, non_finite_weight

        if name := non_finite_weight(self):  # (refused on load: a file that does not load, over one that did)
            raise ValueError(f"weight '{name}' contains NaN or infinite values: saving it to {path or filepath} would "
                             f"write {written}; nothing was written")
        if any(getattr(layer, "lora_enabled", False) and layer.quantization_mode in ("int8", "int4")
               and ops.any(layer.lora_kernel_b != 0) for layer in self._flatten_layers()):  # (adapters that learned)
            warnings.warn(f"this model is quantized ({self.quantization}) and has LoRA adapters: Keras saves them "
                          "merged into the quantized kernels, quantized again, so what loads from "
                          f"{path or filepath} computes other logits than this model; for the same logits, train the "
                          "adapters on the float model, save it, and quantize the model loaded from it", stacklevel=3)
        with adapters_merged_as_stored(self):
            if in_place:
                return write(filepath)
            atomic_write(path, write)

    def export(self, filepath: Any, format: str = "tf_saved_model", verbose: bool | None = None,
               input_signature: Any = None, **kwargs: Any) -> Any:
        """Keras' `export`, its input token ids of any batch and length by default (Keras' default signature takes
        the compute dtype, float32, which GPT2 refuses as ids). For TF Serving's `generate` signatures, see
        `tf_gpt2.export.export_saved_model`; for phones, `tf_gpt2.litert.export_litert`."""
        if input_signature is None:
            input_signature = [keras.InputSpec(shape=(None, None), dtype="int32")]
        if format == "litert":
            refuse_litert_of_any_length(input_signature)
        return super().export(filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write a Hugging Face GPT-2 dir (config.json + model.safetensors)."""
        from tf_gpt2.checkpoints import save_hf

        if self.quantization:
            raise ValueError(f"this model is quantized ({self.quantization}): Hugging Face checkpoints hold float "
                             "weights. Save the float model before quantize(), "
                             "or save this one with model.save('x.keras')")
        save_hf(self, directory)

    def with_dtype(self, dtype: str) -> "GPT2":
        """This model's weights in a GPT2 of dtype policy `dtype` (this model itself when it has that policy).

        Copied layer by layer as Keras saves them: LoRA adapters are merged into their kernels (into a quantized
        kernel, which is quantized again), and a quantized model stays quantized.
        """
        if self.dtype_policy.name == dtype:
            return self
        from tf_gpt2.checkpoints import adapters_merged_as_stored

        model = GPT2.from_config({**self.get_config(), "dtype": dtype})  # quantized and frozen as this one
        with adapters_merged_as_stored(self):
            for source, target in zip(self._flatten_layers(), model._flatten_layers(), strict=True):
                store: dict = {}
                source.save_own_variables(store)
                # Copies: on JAX an array assigned as it is would be this model's too, and training either model
                # would free both (Keras' train step donates its variables' buffers).
                target.load_own_variables({name: ops.copy(value) for name, value in store.items()})
        return model

    def quantize(self, mode: str | None = None, config=None, filters=None, **kwargs) -> None:
        """Keras' quantization of every Dense and Embedding (e.g. "int8", or a `config`); LayerNorms stay float.
        "float8" (Keras' float8 training) takes the Dense layers only: Keras' embeddings have no float8 mode.

        Keras' int8 layers also quantize their inputs on the fly (absmax per row), the tied LM head too (the
        embedding's reverse projection); a saved `.keras` reloads quantized.
        Example: `model.quantize("int8"); model.generate(...)`.
        """
        # The model records one mode (and its settings) for all its layers, which a reload quantizes alike.
        if filters is not None:
            raise ValueError(f"GPT2.quantize quantizes every Dense and Embedding, got filters={filters!r}: a model "
                             "with some layers left float would save a .keras file that cannot be loaded")
        if mode in ("gptq", "awq"):  # calibrated on data: a reload, quantizing first, would have none
            raise ValueError(f"GPT2.quantize takes Keras' int8, int4 and float8 modes, got {mode!r}, which a saved "
                             "model could not be loaded from")
        with warnings.catch_warnings():  # LayerNormalization and Dropout have nothing to quantize
            warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
            if mode == "float8":  # said in the docstring ("Invalid quantization mode" read as a refusal of float8)
                warnings.filterwarnings("ignore", message="Invalid quantization mode.*quantization_mode=float8")
            with collected_once():
                super().quantize(mode, config=config, **kwargs)
        self.quantization, self._quantization_config = mode, config

    # Keras keeps its compiled train/test/predict steps until `compile()` (and `quantize()`) drops them: rebuilt
    # here too when the model changed since they were traced (LoRA adapters, a dtype policy, a rebuilt layer).
    def make_train_function(self, force=False):
        check_optimizer_fits(self)
        return super().make_train_function(force=changed(self, "train_function") or force)

    def make_test_function(self, force=False):
        return super().make_test_function(force=changed(self, "test_function") or force)

    def make_predict_function(self, force=False):
        return super().make_predict_function(force=changed(self, "predict_function") or force)

    def _sublayers(self) -> dict[str, keras.Layer]:
        """The sublayers by path under the model ("wte", "h_0/attn")."""
        return {layer.path.removeprefix(self.path + "/"): layer for layer in self._flatten_layers(include_self=False)
                if layer.path}

    def _frozen_layers(self) -> list[str]:
        """The sublayers set `trainable = False` (kept by `get_config`); none once LoRA adapters are enabled, which
        freeze the rest themselves and are saved merged: the model that loads trains whole, as Keras saves it."""
        if any(getattr(layer, "lora_enabled", False) for layer in self._flatten_layers()):
            return []
        return [path for path, layer in self._sublayers().items() if not layer.trainable]

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict(), "quantization": self.quantization,
                "quantization_config": keras.saving.serialize_keras_object(self._quantization_config),
                "frozen": self._frozen_layers()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("characters") is not None:  # a file saved when the model, not its config, held them
            config["config"] = {**config["config"], "characters": config["characters"]}
        config.pop("characters", None)
        frozen, settings = config.pop("frozen", ()), config.pop("quantization_config", None)
        mode = config.pop("quantization", None)
        model = cls(**config)
        if mode:  # with the settings it was quantized with (weights alone, another block size, ...)
            model.quantize(mode, config=keras.saving.deserialize_keras_object(settings))
        sublayers = model._sublayers()
        if unknown := [path for path in frozen if path not in sublayers]:
            raise ValueError(f"frozen names no layer of this model: {unknown}")
        for path in frozen:
            sublayers[path].trainable = False
        return model
