"""GPT-2 hyper-parameters: one small dataclass, its JSON round trip, and the presets."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import numbers
import os
from typing import Any

import numpy as np

from tf_gpt2.files import atomic_write, bytes_writer, read_json

# The four OpenAI releases, plus small sizes for tests, demos and CPU training.
PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    "gpt2-mini": dict(n_layer=6, n_head=6, n_embd=384, n_positions=256),
    "gpt2-tiny": dict(n_layer=2, n_head=2, n_embd=64, n_positions=128),
}

NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu", "silu")  # the names of `layers.ACTIVATIONS`
DROPOUTS = ("embd_pdrop", "resid_pdrop", "attn_pdrop")


def is_rate(value: Any) -> bool:
    """A dropout rate: a real number in [0, 1), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= value < 1.0


def with_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`values` (GPT2Config fields) with `overrides`: a `dropout` given sets all three rates, except those it is
    given beside (a checkpoint's own `attn_pdrop` does not outlive `--dropout 0`)."""
    if "dropout" in overrides:
        values = {**values, **{name: None for name in DROPOUTS}}
    return {**values, **overrides}


def checked_characters(characters, what: str = "characters") -> list[str]:
    """A character vocabulary as a list: one character per id, each once (token i is characters[i])."""
    characters = list(characters)
    if not characters or not all(isinstance(c, str) and len(c) == 1 for c in characters):
        raise ValueError(f"{what} must be a non-empty sequence of single characters, got {characters[:5]!r}")
    surrogates = [c for c in characters if "\ud800" <= c <= "\udfff"]
    if surrogates:  # (half of a UTF-16 pair: no UTF-8 text holds it, nor can any file or stream write it)
        raise ValueError(f"{what} holds {surrogates[0]!r}, a lone surrogate code point, which no text holds: each id "
                         "must read a character of text")
    repeated = sorted(c for c, n in collections.Counter(characters).items() if n > 1)
    if repeated:
        raise ValueError(f"{what} holds {''.join(repeated)!r} more than once: each id must read one character")
    return characters


@dataclasses.dataclass
class GPT2Config:
    """Shape and numerics of a GPT-2 model.

    Field names follow the Hugging Face / OpenAI checkpoints; `GPT2.from_pretrained` reads a checkpoint's
    `config.json` into this class. A field set later is checked as the constructor checks it (an edit inside the
    `characters` list is not: set the field anew). A model keeps its own
    copy (`model.config`), which does not change but for its characters: a changed one would no longer describe the
    model's weights; `dataclasses.replace(model.config, ...)` makes another config, for another model.

    Example:
    >>> cfg = GPT2Config.from_preset("gpt2-tiny", vocab_size=1000)
    >>> GPT2Config.from_json(cfg.to_json()) == cfg
    True
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    # Dropout, split as GPT-2's own config splits it: on the embeddings (`embd_pdrop`), on each residual branch
    # (`resid_pdrop`) and on the attention probabilities (`attn_pdrop`); each left None takes `dropout`. Only
    # attention dropout needs the written-out softmax: with attn_pdrop 0 training keeps the fused attention kernel.
    dropout: float = 0.0
    embd_pdrop: float | None = None
    resid_pdrop: float | None = None
    attn_pdrop: float | None = None
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_tanh"  # GPT-2's tanh approximation of GELU
    initializer_range: float = 0.02
    norm_position: str = "pre"  # "post": the original Transformer's Add & Norm
    learned_residual_scale: bool = False  # a trainable scalar on each residual branch
    # Round the token embedding up to a multiple of this (64 or 128 tile matmuls better, e.g. 50257 -> 50304);
    # the extra rows never appear in logits or checkpoints.
    vocab_multiple: int = 1
    # A character-level model's vocabulary (token i is characters[i]), so whoever loads it can read and write its
    # text; None for the GPT-2 BPE.
    characters: list[str] | None = None
    # Training only: recompute each block's activations in the backward pass instead of keeping them (memory for
    # one block's activations instead of all of them, for longer steps). Same numbers either way.
    remat: bool = False
    # Training only: the tied LM head and the cross-entropy over this many positions at a time, each chunk's logits
    # recomputed in the backward pass, so a step never holds [batch, time, vocab] logits (0: all at once). Same loss.
    loss_chunk: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "vocab_multiple", "loss_chunk"):
            value, off = getattr(self, name), name == "loss_chunk"  # (loss_chunk 0: off)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < (0 if off else 1):
                raise ValueError(f"GPT2Config.{name} must be {'0 (off) or ' * off}a positive integer, got {value!r}")
            setattr(self, name, int(value))  # (a numpy integer too, as JSON writes it)
        for name, largest in (("n_layer", 1024), ("n_embd", 65536), ("n_positions", 1 << 20), ("vocab_size", 1 << 24),
                              ("vocab_multiple", 1 << 16)):
            if getattr(self, name) > largest:  # sizes no GPT-2 has: refused before anything is allocated
                raise ValueError(f"GPT2Config.{name} must be at most {largest}, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPT2Config.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        for name in ("dropout", *DROPOUTS):
            value = getattr(self, name)
            if (value is not None or name == "dropout") and not is_rate(value):
                raise ValueError(f"GPT2Config.{name} must be in [0, 1), got {value!r}")
            setattr(self, name, None if value is None else float(value))
        for name, lowest, kind in (("layer_norm_epsilon", math.ulp(0), "positive"),  # (0: a constant row was NaN)
                                   ("initializer_range", 0, "non-negative")):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                    and value >= lowest):
                raise ValueError(f"GPT2Config.{name} must be a finite {kind} number, got {value!r}")
            setattr(self, name, float(value))
        for name in ("remat", "learned_residual_scale"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"GPT2Config.{name} must be true or false, got {getattr(self, name)!r}")
            setattr(self, name, bool(getattr(self, name)))
        if self.activation not in ACTIVATIONS:  # refused here, not when a model is built from a saved config
            raise ValueError(f"GPT2Config.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.characters is not None:
            self.characters = checked_characters(self.characters, "GPT2Config.characters")
            if len(self.characters) != self.vocab_size:
                raise ValueError(f"GPT2Config.characters must be {self.vocab_size} characters (vocab_size), got "
                                 f"{len(self.characters)}")
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(
                f"GPT2Config.norm_position must be one of {NORM_POSITIONS}, got {self.norm_position!r}"
            )
        object.__setattr__(self, "_checked", True)

    def fixed_copy(self) -> "GPT2Config":
        """A copy whose fields do not change but its characters: a built model's own config."""
        copy = dataclasses.replace(self)
        object.__setattr__(copy, "_built", True)
        return copy

    def __setattr__(self, name: str, value: Any) -> None:
        """A field set after construction is checked as the constructor checks it (a misspelt one is refused, not
        added); the config of a built model changes only its characters, which no weight has the shape of."""
        if not self.__dict__.get("_checked"):  # (construction)
            return object.__setattr__(self, name, value)
        fields = [f.name for f in dataclasses.fields(self)]
        if name not in fields:
            raise AttributeError(f"GPT2Config has no field {name!r}; its fields: {', '.join(fields)}")
        if self.__dict__.get("_built") and name != "characters":  # (it drifted from the weights and layers, unsaid)
            raise AttributeError(f"GPT2Config.{name} of a built model does not change: the model's weights, layers "
                                 f"and traced steps were made from it; build another, GPT2(dataclasses.replace("
                                 f"model.config, {name}=...)), and give it the weights (set_weights) where their "
                                 "shapes allow")
        object.__setattr__(self, name, getattr(dataclasses.replace(self, **{name: value}), name))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def dropout_rate(self, name: str) -> float:
        """The rate of dropout `name` ("embd_pdrop", "resid_pdrop" or "attn_pdrop"): its own field, else `dropout`."""
        value = getattr(self, name)
        return self.dropout if value is None else value

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding: vocab_size rounded up to a multiple of vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    def without_training_settings(self) -> "GPT2Config":
        """This config with its training-only fields (`remat`, `loss_chunk`: how a training step is computed, not
        what) at their defaults: what a trained model is saved with, and what a run that starts from it inherits."""
        return dataclasses.replace(self, remat=False, loss_chunk=0)

    def block_variant(self) -> dict[str, Any]:
        """The block options that are not GPT-2's (`tf_gpt2.variants.VariantBlock`); {} for GPT-2's block."""
        variant = {"norm_position": self.norm_position, "learned_residual_scale": self.learned_residual_scale}
        return {} if variant == {"norm_position": "pre", "learned_residual_scale": False} else variant

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (the LM head is tied, so it adds nothing); `non_embedding`: without the position table,
        as nanoGPT counts (a lookup, while the token table is also the LM head's matmul), 123.65M for gpt2."""
        d, L = self.n_embd, self.n_layer
        per_block = 12 * d * d + 13 * d + int(self.learned_residual_scale) * 2
        total = L * per_block + 2 * d + self.padded_vocab_size * d
        return total if non_embedding else total + self.n_positions * d

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPT2Config":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GPT2Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown GPT2Config fields: {unknown}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GPT2Config":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON, whole or not at all (a failed write keeps the previous file)."""
        atomic_write(os.fspath(path), bytes_writer((self.to_json() + "\n").encode("utf-8")))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GPT2Config":
        """The config `save` wrote; a file that is not one is a ValueError naming it."""
        values = read_json(os.fspath(path), "a GPT2Config")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{os.fspath(path)}: {e}") from None
