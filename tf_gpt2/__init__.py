"""tf_gpt2: a real GPT-2 in Keras 3 custom layers, trainable with `model.fit`, exportable
to TF Serving and LiteRT."""

import keras

if keras.backend.backend() not in ("tensorflow", "jax"):  # (torch: generate and eval failed deep inside)
    raise ImportError(f"tf_gpt2 runs on Keras' TensorFlow or JAX backend, not {keras.backend.backend()!r}: set "
                      "KERAS_BACKEND=tensorflow (the default) or jax")

from tf_gpt2.config import PRESETS, GPT2Config  # noqa: E402
from tf_gpt2.layers import MLP, CausalSelfAttention, TransformerBlock  # noqa: E402
from tf_gpt2.model import GPT2  # noqa: E402
from tf_gpt2.tokenizer import CharacterTokenizer, GPT2Tokenizer  # noqa: E402

__all__ = ["GPT2", "GPT2Config", "GPT2Tokenizer", "CharacterTokenizer", "PRESETS", "CausalSelfAttention", "MLP",
           "TransformerBlock"]
__version__ = "0.1.0"
