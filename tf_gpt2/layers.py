"""The layers of a GPT-2 block: causal self-attention, the MLP, and the residual block.

Written in `keras.ops` only, so the same code runs on the TensorFlow and JAX backends.
Read top to bottom, in the order data flows: attention mixes information between
positions, the MLP transforms each position, and the block wires both into the
residual stream with LayerNorm in front (GPT-2's "pre-LN" layout).
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import keras
from keras import ops

ACTIVATIONS = {
    "gelu_tanh": lambda x: ops.gelu(x, approximate=True),  # GPT-2's "gelu_new"
    "gelu": lambda x: ops.gelu(x, approximate=False),
    "relu": ops.relu,
    "silu": ops.silu,
}


def _dense(units: int, stddev: float, name: str, dtype) -> keras.layers.Dense:
    return keras.layers.Dense(
        units=units,
        kernel_initializer=keras.initializers.RandomNormal(stddev=stddev),
        bias_initializer="zeros",
        name=name,
        dtype=dtype,
    )


def causal_mask(query_len, key_len, query_offset=0, visible=None):
    """Boolean [batch or 1, 1, query_len, key_len], attention's one mask: query i (at cache slot offset+i) may see
    key j <= offset+i, and only the keys `visible` (int/bool [batch, key_len], 0 for padding) when given."""
    query_pos = ops.arange(query_len, dtype="int32")[:, None] + ops.cast(query_offset, "int32")
    key_pos = ops.arange(key_len, dtype="int32")[None, :]
    mask = (key_pos <= query_pos)[None, None]
    return mask if visible is None else ops.logical_and(mask, ops.cast(visible, "bool")[:, None, None, :])


# How cache buffers are made and written. Compiled code (generate under XLA, the LiteRT graphs) starts from
# zeros and updates slices in place with `slice_update`. On TensorFlow that op exists only inside XLA, and TF
# Serving runs its graphs with XLA compilation off, so a SavedModel is traced under `cache_buffers(...)` with
# ops that have plain TensorFlow kernels (`tf_gpt2.export` gives them).
_CACHE_BUFFERS = contextvars.ContextVar("cache_buffers", default=None)


@contextlib.contextmanager
def cache_buffers(buffers):
    """Within this block, caches are made with `buffers.new(shape, dtype)` and written with
    `buffers.write(buffer, updates, index)` (the signature of `update_slots`)."""
    token = _CACHE_BUFFERS.set(buffers)
    try:
        yield
    finally:
        _CACHE_BUFFERS.reset(token)


def new_buffer(shape, dtype):
    """A cache buffer of zeros (see `cache_buffers`)."""
    buffers = _CACHE_BUFFERS.get()
    return ops.zeros(shape, dtype) if buffers is None else buffers.new(shape, dtype)


def update_slots(buffer, updates, index):
    """`buffer` [batch, heads, length, dim] with `updates` [batch, heads, time, dim] at positions `index`,
    `index + 1`, ... `index + time - 1`.

    The one place that decides how a cache write is expressed (see `cache_buffers`).
    """
    buffers = _CACHE_BUFFERS.get()
    if buffers is not None:
        return buffers.write(buffer, updates, index)
    zero = ops.zeros((), "int32")
    return ops.slice_update(buffer, (zero, zero, index, zero), updates)


def write_cache(cache: dict, key, value, index):
    """`cache` with this step's `key`/`value` [batch, n_head, time, head_dim] written at position `index`.

    The callers (generate, the served and on-device signatures) pass only positions inside the cache.
    """
    return {name: update_slots(cache[name], ops.cast(new, cache[name].dtype), ops.cast(index, "int32"))
            for name, new in (("key", key), ("value", value))}


@keras.saving.register_keras_serializable(package="tf_gpt2")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head self-attention in which each position sees only itself and the past.

    One fused projection `c_attn` makes queries, keys and values for all heads; the
    heads attend independently; `c_proj` mixes them back into the residual stream.
    A plain call attends through `keras.ops.dot_product_attention`, a fused op: on a GPU under JAX it is
    cuDNN's flash attention when queries, keys and values are float16/bfloat16 (e.g. `mixed_bfloat16`) on an
    Ampere or newer GPU, and XLA's attention otherwise. Decoding with a cache, and training with attention
    dropout (no fused kernel takes it), use the written-out softmax(q·kᵀ/√d + mask)·v below it.

    Args:
        n_embd: width of the residual stream.
        n_head: number of heads; must divide `n_embd`.
        dropout: dropout on the output (GPT-2's `resid_pdrop`).
        attention_dropout: dropout on the attention probabilities (`attn_pdrop`); None: the same as `dropout`.
        initializer_range: std of the N(0, std) init of `c_attn`.
        output_initializer_range: std for `c_proj` (GPT-2 scales it by 1/sqrt(2·n_layer)).

    Call arguments:
        x: float [batch, time, n_embd].
        visible: optional bool [batch or 1, 1, time, key_len], True where a query may attend to a key
            (`causal_mask` builds it); default: causal over `x`. With a cache, key_len is the cache's length.
        cache: optional dict `{"key": k, "value": v}`, each [batch, n_head, max_len, head_dim],
            the keys/values of earlier steps; this step's are written at `cache_index`.
        cache_index: position in the cache of the first token of `x`.

    Returns `(y, cache)`: y float [batch, time, n_embd], and the updated cache (None without one).
    `attention_probs(x)` gives the attention probabilities [batch, n_head, time, time] instead.

    Example:
    >>> attn = CausalSelfAttention(n_embd=32, n_head=4)
    >>> y, cache = attn(keras.random.normal((2, 5, 32)))
    >>> tuple(y.shape), cache
    ((2, 5, 32), None)
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        dropout: float = 0.0,
        attention_dropout: float | None = None,
        initializer_range: float = 0.02,
        output_initializer_range: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_embd, self.n_head, self.head_dim = n_embd, n_head, n_embd // n_head
        self.dropout, self.attention_dropout = dropout, attention_dropout
        self.initializer_range = initializer_range
        self.output_initializer_range = output_initializer_range
        # Sublayers do not inherit a dtype policy: pass ours, or a mixed model runs them in float32.
        policy = self.dtype_policy
        self.c_attn = _dense(units=3 * n_embd, stddev=initializer_range, name="c_attn", dtype=policy)
        self.c_proj = _dense(units=n_embd, stddev=output_initializer_range or initializer_range, name="c_proj",
                             dtype=policy)
        self.attn_dropout = keras.layers.Dropout(dropout if attention_dropout is None else attention_dropout,
                                                 dtype=policy)
        self.resid_dropout = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, input_shape):
        self.c_attn.build(input_shape)
        self.c_proj.build(input_shape)

    def _heads(self, x):
        """Queries, keys and values [batch, time, n_head, head_dim] from the fused projection."""
        shape = (ops.shape(x)[0], ops.shape(x)[1], self.n_head, self.head_dim)
        return tuple(ops.reshape(t, shape) for t in ops.split(self.c_attn(x), 3, axis=-1))

    def _probabilities(self, q, k, visible):
        """softmax(q·kᵀ/√d + mask) [batch, n_head, q_len, k_len] over q, k [batch, n_head, len, head_dim]."""
        # Scores in float32 so that softmax is stable under mixed precision.
        scores = ops.cast(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), "float32") / math.sqrt(self.head_dim)
        visible = causal_mask(ops.shape(q)[2], ops.shape(k)[2]) if visible is None else visible
        return ops.softmax(ops.where(visible, scores, -1e9), axis=-1)  # hidden keys get probability exp(-1e9) = 0

    def call(self, x, visible=None, cache=None, cache_index=0, training=None):
        batch, time = ops.shape(x)[0], ops.shape(x)[1]
        q, k, v = self._heads(x)
        if cache is None and not (self.attn_dropout.rate > 0 and training):
            # The fused op (see the class docstring for which kernel runs): the same math as below.
            y = ops.dot_product_attention(q, k, v, mask=visible, scale=1 / math.sqrt(self.head_dim),
                                          is_causal=visible is None)
            return self.resid_dropout(self.c_proj(ops.reshape(y, (batch, time, self.n_embd))), training=training), None

        q, k, v = (ops.transpose(t, (0, 2, 1, 3)) for t in (q, k, v))  # [B, H, T, Dh]
        if cache is not None:  # decoding: write this step's keys/values, attend over the whole cache
            cache = write_cache(cache, k, v, cache_index)
            k, v = ops.cast(cache["key"], q.dtype), ops.cast(cache["value"], q.dtype)
            visible = causal_mask(time, ops.shape(k)[2], cache_index) if visible is None else visible
        probs = self._probabilities(q, k, visible)
        y = ops.matmul(self.attn_dropout(ops.cast(probs, v.dtype), training=training), v)
        y = ops.reshape(ops.transpose(y, (0, 2, 1, 3)), (batch, time, self.n_embd))  # merge heads
        return self.resid_dropout(self.c_proj(y), training=training), cache

    def attention_probs(self, x, visible=None):
        """The attention probabilities of `x` [batch, n_head, time, time]: who attends to whom."""
        q, k, _ = (ops.transpose(t, (0, 2, 1, 3)) for t in self._heads(x))
        return self._probabilities(q, k, visible)

    def get_config(self):
        return {
            **super().get_config(),
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "output_initializer_range": self.output_initializer_range,
        }


@keras.saving.register_keras_serializable(package="tf_gpt2")
class MLP(keras.layers.Layer):
    """The position-wise feed-forward network: expand 4x, GELU, project back.

    Example:
    >>> mlp = MLP(n_embd=32)
    >>> tuple(mlp(keras.random.normal((2, 5, 32))).shape)
    (2, 5, 32)
    """

    def __init__(
        self,
        n_embd: int,
        activation: str = "gelu_tanh",
        dropout: float = 0.0,
        initializer_range: float = 0.02,
        output_initializer_range: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.n_embd, self.activation = n_embd, activation
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.output_initializer_range = output_initializer_range
        policy = self.dtype_policy
        self.c_fc = _dense(units=4 * n_embd, stddev=initializer_range, name="c_fc", dtype=policy)
        self.c_proj = _dense(units=n_embd, stddev=output_initializer_range or initializer_range, name="c_proj",
                             dtype=policy)
        self.resid_dropout = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, input_shape):
        self.c_fc.build(input_shape)
        self.c_proj.build((*input_shape[:-1], 4 * self.n_embd))

    def call(self, x, training=None):
        h = ACTIVATIONS[self.activation](self.c_fc(x))
        return self.resid_dropout(self.c_proj(h), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "n_embd": self.n_embd,
            "activation": self.activation,
            "dropout": self.dropout,
            "initializer_range": self.initializer_range,
            "output_initializer_range": self.output_initializer_range,
        }


@keras.saving.register_keras_serializable(package="tf_gpt2")
class TransformerBlock(keras.layers.Layer):
    """One GPT-2 block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.

    Args:
        n_embd: width of the residual stream.
        n_head: attention heads.
        n_layer: depth of the whole model; the residual projections are initialised with
            std `initializer_range / sqrt(2 * n_layer)` so the residual stream does not grow
            with depth.
        dropout: dropout on each branch's output (GPT-2's `resid_pdrop`).
        attention_dropout: dropout on the attention probabilities (`attn_pdrop`); None: the same as `dropout`.
        activation: the MLP's activation (GPT-2: "gelu_tanh").
        layer_norm_epsilon: LayerNorm epsilon (1e-5 in GPT-2).
        initializer_range: std of the N(0, std) init of the projections.

    Call arguments: as `CausalSelfAttention`'s. Returns `(x, cache)` in the same way.
    Other ways to join the branches to the stream (post-LN, learned scales): `tf_gpt2.variants`.

    Example:
    >>> block = TransformerBlock(n_embd=32, n_head=4)
    >>> x, cache = block(keras.random.normal((2, 5, 32)))
    >>> tuple(x.shape)
    (2, 5, 32)
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        n_layer: int = 1,
        dropout: float = 0.0,
        attention_dropout: float | None = None,
        activation: str = "gelu_tanh",
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.n_embd, self.n_head, self.n_layer = n_embd, n_head, n_layer
        self.dropout, self.attention_dropout, self.activation = dropout, attention_dropout, activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        residual_std = initializer_range / math.sqrt(2 * n_layer)
        policy = self.dtype_policy
        self.ln_1 = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="ln_1", dtype=policy)
        self.attn = CausalSelfAttention(
            n_embd=n_embd, n_head=n_head, dropout=dropout, attention_dropout=attention_dropout,
            initializer_range=initializer_range,
            output_initializer_range=residual_std, name="attn", dtype=policy,
        )
        self.ln_2 = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="ln_2", dtype=policy)
        self.mlp = MLP(n_embd=n_embd, activation=activation, dropout=dropout, initializer_range=initializer_range,
                       output_initializer_range=residual_std, name="mlp", dtype=policy)

    def build(self, input_shape):
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build(input_shape)

    def call(self, x, visible=None, cache=None, cache_index=0, training=None):
        a, cache = self.attn(self.ln_1(x), visible=visible, cache=cache, cache_index=cache_index, training=training)
        x = x + a
        x = x + self.mlp(self.ln_2(x), training=training)
        return x, cache

    def attention_input(self, x):
        """What this block's attention reads of the residual stream `x`."""
        return self.ln_1(x)

    def get_config(self):
        return {
            **super().get_config(),
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_layer": self.n_layer,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": self.initializer_range,
        }


def recomputed(block: keras.layers.Layer, x, visible=None):
    """`block(x)` in training, its activations recomputed in the backward pass (`keras.remat`) instead of kept.

    The recomputed function is pure: its dropout seeds go in as inputs and come out moved on, so the recomputation
    draws the forward pass's masks. On JAX the block's weights are also handed in from the train step's stateless
    scope (the inner scope hides it).
    """
    seeds = [layer.seed_generator.state for layer in block._flatten_layers() if isinstance(layer, keras.layers.Dropout)
             and layer.rate > 0]
    weights = block.weights if keras.backend.backend() == "jax" else []

    def forward(x, *seed_values):
        mapping = [(weight, weight.value) for weight in weights] + list(zip(seeds, seed_values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            y = block(x, visible=visible, training=True)[0]
        return (y, *[scope.get_current_value(seed) for seed in seeds])

    y, *moved = keras.remat(forward)(x, *[seed.value for seed in seeds])
    for seed, value in zip(seeds, moved):
        seed.assign(value)
    return y
