"""tf_gpt2: a real GPT-2 in Keras 3 custom layers, trainable with `model.fit`, exportable
to TF Serving and LiteRT."""

from tf_gpt2.config import PRESETS, GPT2Config
from tf_gpt2.layers import MLP, CausalSelfAttention, TransformerBlock
from tf_gpt2.model import GPT2
from tf_gpt2.tokenizer import CharacterTokenizer, GPT2Tokenizer

__all__ = ["GPT2", "GPT2Config", "GPT2Tokenizer", "CharacterTokenizer", "PRESETS", "CausalSelfAttention", "MLP",
           "TransformerBlock"]
__version__ = "0.1.0"
