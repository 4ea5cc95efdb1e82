"""Perplexity and bits-per-byte of a model on a text, with the GPT-2 paper's protocol: the text is
detokenized (optionally), tokenized with the GPT-2 BPE, prefixed with <|endoftext|>, and scored with a
strided sliding window so every token is predicted once, from up to `context` tokens before it.

>>> from tf_gpt2 import GPT2, GPT2Config
>>> model = GPT2(GPT2Config.from_preset("gpt2-tiny"))
>>> text = "To be, or not to be: that is the question."
>>> result = evaluate(model, text, context=8, stride=4)
>>> result.tokens == len(GPT2Tokenizer().encode(text))   # every token is scored once
True
>>> result.perplexity > 1.0
True
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from keras import ops

from tf_gpt2.checks import check_in_vocabulary, checked_integer
from tf_gpt2.detokenize import DETOKENIZERS
from tf_gpt2.progress import progress_bar
from tf_gpt2.tokenizer import GPT2Tokenizer, checked_ids, checked_utf8, end_of_text_id, tokenizer_for
from tf_gpt2.xla import compiled


def perplexity(loss: float) -> float:
    """exp(loss), inf past float64's range (a loss above 709.78 nats); NaN stays NaN."""
    return math.inf if loss > math.log(sys.float_info.max) else math.exp(loss)


@dataclass(frozen=True)
class EvalResult:
    """Summed negative log-likelihood (nats) over `tokens` scored tokens of a text of `bytes` UTF-8 bytes."""

    nll: float
    tokens: int
    bytes: int

    @property
    def loss(self) -> float:
        """Mean cross-entropy per token, in nats."""
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        """exp(loss): the token-level perplexity (`perplexity`)."""
        return perplexity(self.loss)

    @property
    def bits_per_byte(self) -> float:
        """Total bits over the UTF-8 bytes of the (detokenized) text: comparable across tokenizers."""
        if self.bytes == 0:
            raise ValueError("bits per byte needs the text itself; this result was scored from token ids")
        return self.nll / (math.log(2) * self.bytes)


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) for each window over ids[0:n_tokens]: the window's inputs are
    ids[begin:end-1], and its last `scored` next-token predictions are counted. Together the windows score
    ids[1:] exactly once, each token seeing up to `context` tokens (the first window fewer)."""
    spans, scored_until, begin = [], 1, 0
    while scored_until < n_tokens:
        end = min(begin + context + 1, n_tokens)
        spans.append((begin, end, end - scored_until))
        scored_until, begin = end, begin + stride
    return spans


def _window_nll(model, inputs, targets, weights):
    """Per-row sum of -log p(target) over the weighted positions, softmax in float32."""
    logits = ops.cast(model(inputs), "float32")
    log_probs = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(log_probs, ops.expand_dims(targets, -1), axis=-1)[..., 0]
    return -ops.sum(ops.where(weights > 0, picked * weights, 0.0), axis=-1)  # (padding is not counted)


def check_windows(context: int | None, stride: int | None, batch_size: int,
                  n_positions: int | None = None) -> tuple[int | None, int | None]:
    """`context` and `stride` as `evaluate` takes them (None: its defaults, where `n_positions` is known), or the
    first of them, or `batch_size`, refused by name."""
    for name, value in (("context", context), ("stride", stride), ("batch_size", batch_size)):
        if value is not None or name == "batch_size":  # (a float was a bare TypeError, deep inside)
            checked_integer(name, value)
    context = n_positions if context is None else context
    stride = max(1, context // 2) if stride is None and context is not None else stride
    if context is not None and not 0 < context <= (n_positions or context):
        raise ValueError(f"context must be in 1..{n_positions} (the model's n_positions), got {context}"
                         if n_positions else f"context must be >= 1, got {context}")
    if stride is not None and not 0 < stride <= (context or stride):
        raise ValueError(f"stride must be in 1..context ({context}), got {stride}" if context else
                         f"stride must be >= 1, got {stride}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return context, stride


def evaluate(model, text: str | Sequence[int], tokenizer: GPT2Tokenizer | None = None, context: int | None = None,
             stride: int | None = None, batch_size: int = 8, detokenize: str = "none",
             verbose: bool = False, source: str = "text") -> EvalResult:
    """Score `text` (a string, or token ids already starting with their own context token) with `model`.

    A string is read with the model's own vocabulary: GPT-2's BPE after `<|endoftext|>`, or, for a character
    model, its characters (the first one is the context of the rest); `tokenizer`, where given, instead (any object
    with `encode`, a transformers tokenizer too: the text follows its `eot_id` where it has one, else the model's).

    context: tokens each prediction may see (default: the model's n_positions); stride: how far the
    window moves (default context // 2: each token, past the first window, sees at least half a context);
    verbose: a progress bar over the windows (where it can be redrawn: `tf_gpt2.progress`); source: what errors
    call the text (`tf-gpt2 eval`: its file).
    """
    context, stride = check_windows(context, stride, batch_size, model.config.n_positions)
    if detokenize not in DETOKENIZERS:
        raise ValueError(f"unknown detokenizer {detokenize!r}; choose one of {sorted(DETOKENIZERS)}")
    if isinstance(text, str):
        text = DETOKENIZERS[detokenize](checked_utf8(source, text))
        tokenizer = tokenizer or tokenizer_for(model.config)  # refuses a model too small for GPT-2's ids
        start = getattr(tokenizer, "eot_id", end_of_text_id(model.config))  # (another's, transformers': the model's)
        try:  # as `generate` reads it: GPT-2's BPE after <|endoftext|>, or characters (the first is the context)
            ids = ([] if start is None else [start]) + tokenizer.encode(text)
        except ValueError as e:  # the text's own fault: say whose
            raise ValueError(f"{source}: {e}") from None
        context_bytes = 0 if start is not None else len(tokenizer.decode(ids[:1]).encode("utf-8"))  # (not scored)
        n_bytes = len(text.encode("utf-8")) - context_bytes
    elif given := [name for name, value in (("tokenizer", tokenizer), ("detokenize", detokenize))
                   if value not in (None, "none")]:
        raise ValueError(f"{' and '.join(given)} read{'s' * (len(given) == 1)} text, and token ids were given")
    else:
        ids, n_bytes = checked_ids(text, model.config.vocab_size), 0
    if len(ids) < 2:
        raise ValueError(f"{source} is empty: nothing to score" if not ids or text == "" else
                         f"{source} is one token: nothing to score (each token is scored after the one before it)")
    ids = np.asarray(ids, np.int32)
    check_in_vocabulary(ids, model.config.vocab_size)

    spans = windows(len(ids), context, stride)
    window_nll, nll = compiled(model, _window_nll), 0.0
    progress = progress_bar(len(spans), unit_name="window") if verbose else None
    # A short text is not padded to a large batch or a whole context: rows and positions in powers of two (the
    # positions past a text's end are not counted, and the model is causal), so that texts of many lengths share
    # a few compiled programs.
    rows = min(batch_size, 1 << (len(spans) - 1).bit_length())
    width = min(context, 1 << (len(ids) - 2).bit_length())
    for first in range(0, len(spans), rows):
        inputs = np.zeros((rows, width), np.int32)
        targets = np.zeros((rows, width), np.int32)
        weights = np.zeros((rows, width), np.float32)
        for row, (begin, end, scored) in enumerate(spans[first:first + rows]):
            inputs[row, : end - 1 - begin] = ids[begin:end - 1]
            targets[row, : end - 1 - begin] = ids[begin + 1:end]
            weights[row, end - 1 - begin - scored: end - 1 - begin] = 1.0
        row_nll = ops.convert_to_numpy(window_nll(inputs, targets, weights))
        nll += float(np.sum(row_nll.astype(np.float64)))
        if progress:
            progress.update(min(first + rows, len(spans)))
    if not math.isfinite(nll):
        raise FloatingPointError("the model produced non-finite log-probabilities (NaN or inf) on "
                                 f"{'this text' if source == 'text' else source}: check its weights (or its precision)")
    return EvalResult(nll=nll, tokens=len(ids) - 1, bytes=n_bytes)
