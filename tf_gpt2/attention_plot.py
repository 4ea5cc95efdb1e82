"""Look inside: per-layer, per-head attention maps, and a matplotlib grid of them."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from tf_gpt2.checks import check_token_ids, checked_integer
from tf_gpt2.files import atomic_write
from tf_gpt2.tokenizer import checked_ids


def attention_maps(model, token_ids: Sequence[int]) -> np.ndarray:
    """Attention probabilities of one sequence: float [n_layer, n_head, time, time]. The forward pass, block by
    block, stopping at each to ask its attention who attends to whom."""
    ids = np.array([checked_ids(token_ids, model.config.vocab_size)], np.int32)
    check_token_ids(ids, model.config.vocab_size, model.config.n_positions)
    x = model.embed(ids, np.arange(ids.shape[1])[None])
    maps = []
    for block in model.h:
        maps.append(np.asarray(block.attn.attention_probs(block.attention_input(x)))[0])
        x, _ = block(x)
    return np.stack(maps)


def plot_attention(maps: np.ndarray, tokens: Sequence[str], layer: int = 0, path: str | None = None):
    """Draw every head of one layer as a heat map (rows: queries, columns: keys it attends to).

    Example:
    >>> from tf_gpt2 import GPT2, GPT2Config, GPT2Tokenizer
    >>> model = GPT2(GPT2Config.from_preset("gpt2-tiny"))
    >>> tok = GPT2Tokenizer()
    >>> ids = tok.encode("The cat sat on the mat")
    >>> fig = plot_attention(attention_maps(model, ids), [tok.decode([i]) for i in ids], layer=1)
    """
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plotting attention needs matplotlib: pip install matplotlib") from e
    if isinstance(path, (str, os.PathLike)):
        name = os.fspath(path)
        if not name:
            raise ValueError("path is empty: name the image file to write, or leave it out to get the figure only")
        if os.path.basename(name) in ("", ".", "..") or os.path.isdir(name):  # (it wrote a hidden ".png" in it)
            raise ValueError(f"path {name!r} names a folder: name the image file to write in it")
    maps = np.asarray(maps)
    if maps.ndim != 4:  # (one layer's [n_head, T, T] failed inside matplotlib)
        raise ValueError(f"maps must be [n_layer, n_head, T, T] (attention_maps' answer), got shape {np.shape(maps)}")
    if not 0 <= checked_integer("layer", layer) < len(maps):  # (True would plot layer 1)
        raise ValueError(f"layer must be in [0, {len(maps)}), got {layer}")
    heads = maps[layer]
    if len(tokens) != heads.shape[-1]:
        raise ValueError(f"{len(tokens)} token labels for {heads.shape[-1]} positions")
    cols = min(4, len(heads))
    rows = -(-len(heads) // cols)
    size = (3.2 * cols, 3.2 * rows)
    if path is None:  # shown where pyplot shows figures (a notebook's cell)
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=size)
    else:  # only written: pyplot's backend and its open figures are left as the caller has them
        fig = Figure(figsize=size)
    axes = fig.subplots(rows, cols, squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= len(heads):
            ax.axis("off")
            continue
        ax.imshow(heads[h], cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"layer {layer}, head {h}", fontsize=9)
        # Labels are text as it is: "$$" (a GPT-2 token) is no TeX to render
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7, parse_math=False)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7, parse_math=False)
    fig.tight_layout()
    if path is not None and not isinstance(path, (str, os.PathLike)):  # a file object: matplotlib writes to it
        fig.savefig(path, dpi=100)
    elif path:  # written whole or not at all (a killed save leaves the previous image)
        path = os.fspath(path)
        suffix = os.path.splitext(path)[1][1:].lower()
        if not suffix:  # as matplotlib names a file without one: with its default format's
            suffix = matplotlib.rcParams["savefig.format"]
            path = f"{path}.{suffix}"
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=suffix, dpi=100))
    return fig
