"""Blocks that are not GPT-2's, for the configurations that ask for them: LayerNorm after each residual add (the
original Transformer's "Add & Norm", `norm_position="post"`) and a learned scalar on each residual branch
(`learned_residual_scale`). GPT-2's own block is `layers.TransformerBlock`; this one changes only how the two
branches meet the residual stream, so its weights keep the same names.
"""

from __future__ import annotations

import keras
from keras import ops

from tf_gpt2.config import NORM_POSITIONS
from tf_gpt2.layers import TransformerBlock


@keras.saving.register_keras_serializable(package="tf_gpt2")
class VariantBlock(TransformerBlock):
    """A `TransformerBlock` with post-LN and/or learned residual scales.

    Post-LN: `x = ln_1(x + attn(x))`, then `x = ln_2(x + mlp(x))`. With `learned_residual_scale`, each branch is
    multiplied by a trainable scalar (`attn_scale`, `mlp_scale`, initialised to 1) before it is added.

    Example:
    >>> block = VariantBlock(n_embd=32, n_head=4, norm_position="post", learned_residual_scale=True)
    >>> x, cache = block(keras.random.normal((2, 5, 32)))
    >>> tuple(x.shape), sorted(w.name for w in block.weights if w.name.endswith("_scale"))
    ((2, 5, 32), ['attn_scale', 'mlp_scale'])
    """

    def __init__(self, n_embd: int, n_head: int, norm_position: str = "pre", learned_residual_scale: bool = False,
                 **kwargs):
        if norm_position not in NORM_POSITIONS:
            raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, got {norm_position!r}")
        super().__init__(n_embd, n_head, **kwargs)
        self.norm_position, self.learned_residual_scale = norm_position, learned_residual_scale
        self.attn_scale = self.mlp_scale = None

    def build(self, input_shape):
        super().build(input_shape)
        if self.learned_residual_scale:
            self.attn_scale = self.add_weight(name="attn_scale", shape=(), initializer="ones")
            self.mlp_scale = self.add_weight(name="mlp_scale", shape=(), initializer="ones")

    def _scaled(self, branch, scale):
        return branch if scale is None else branch * ops.cast(scale, branch.dtype)

    def call(self, x, visible=None, cache=None, cache_index=0, training=None):
        post = self.norm_position == "post"
        a, cache = self.attn(x if post else self.ln_1(x), visible=visible, cache=cache, cache_index=cache_index,
                             training=training)
        x = x + self._scaled(a, self.attn_scale)
        if post:
            x = self.ln_1(x)
        m = self.mlp(x if post else self.ln_2(x), training=training)
        x = x + self._scaled(m, self.mlp_scale)
        return (self.ln_2(x) if post else x), cache

    def attention_input(self, x):
        return x if self.norm_position == "post" else self.ln_1(x)

    def get_config(self):
        return {**super().get_config(), "norm_position": self.norm_position,
                "learned_residual_scale": self.learned_residual_scale}
