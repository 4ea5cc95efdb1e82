import os
import pathlib

import numpy as np
import pytest

from tf_gpt2 import GPT2, GPT2Config, GPT2Tokenizer
from tf_gpt2.attention_plot import attention_maps, plot_attention


def test_attention_maps_are_the_models_and_plot_one_panel_per_head(tmp_path):
    pytest.importorskip("matplotlib")
    model = GPT2(GPT2Config.from_preset("gpt2-tiny"))
    tok = GPT2Tokenizer()
    ids = tok.encode("The cat sat on the mat")
    maps = attention_maps(model, ids)
    assert maps.shape == (2, 2, len(ids), len(ids))
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)  # each query's attention is a distribution
    assert np.all(np.triu(maps, k=1) == 0)  # over itself and earlier positions only
    import matplotlib
    import matplotlib.pyplot as plt

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    matplotlib.use("svg")  # the caller's (a notebook's inline one, say): a figure written to a file leaves it so
    try:
        fig = plot_attention(maps, [tok.decode([i]) for i in ids], layer=1, path=str(tmp_path / "attn.png"))
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures  # (it switched to Agg)
    finally:
        matplotlib.use(backend)
    shown = plot_attention(maps, [tok.decode([i]) for i in ids])  # no file: pyplot's, for a notebook to show
    assert shown.number in plt.get_fignums()
    plt.close(shown)
    assert len([ax for ax in fig.axes if ax.images]) == 2
    assert (tmp_path / "attn.png").read_bytes()[:4] == b"\x89PNG"
    png = (tmp_path / "attn.png").read_bytes()

    def killed_while_writing(self, file, **kwargs):
        open(file, "wb").write(b"\x89PNG half")
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:  # a save that stops half-way leaves the previous image whole
        patch.setattr(type(fig), "savefig", killed_while_writing)
        with pytest.raises(KeyboardInterrupt):
            plot_attention(maps, [tok.decode([i]) for i in ids], layer=0, path=str(tmp_path / "attn.png"))
    assert (tmp_path / "attn.png").read_bytes() == png
    plot_attention(maps, [tok.decode([i]) for i in ids], layer=0, path=str(tmp_path / "attn.svg"))
    assert b"<svg" in (tmp_path / "attn.svg").read_bytes()[:400]  # the format its suffix names
    plot_attention(maps, [tok.decode([i]) for i in ids], layer=0, path=str(tmp_path / "plain"))
    assert (tmp_path / "plain.png").read_bytes()[:4] == b"\x89PNG"  # none: matplotlib's default, named so
    import io

    buffer = io.BytesIO()  # a file object: written to, as matplotlib writes one
    plot_attention(maps, [tok.decode([i]) for i in ids], layer=0, path=buffer)
    assert buffer.getvalue()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="path is empty: name the image file"):
        plot_attention(maps, ["x"] * len(ids), path="")  # (it wrote nothing and said nothing)
    for folder in (tmp_path, pathlib.Path(""), str(tmp_path / "sub") + os.sep):  # (a hidden ".png" was written there)
        with pytest.raises(ValueError, match="names a folder: name the image file"):
            plot_attention(maps, ["x"] * len(ids), path=folder)
    with pytest.raises(ValueError, match="layer must be in \\[0, 2\\)"):
        plot_attention(maps, ["x"] * len(ids), layer=2)
    for not_a_layer in (True, 0.0):  # (True plotted layer 1; 0.0 failed in numpy's indexing)
        with pytest.raises(ValueError, match="layer must be an integer"):
            plot_attention(maps, ["x"] * len(ids), layer=not_a_layer)
    with pytest.raises(ValueError, match=r"maps must be \[n_layer, n_head, T, T\].*got shape \(2, 6, 6\)"):
        plot_attention(maps[0], ["x"] * len(ids))  # one layer's maps (it failed in matplotlib's imshow)
    money = tok.encode("it costs $$ here")  # GPT-2 has the token "$$": drawn as text, not read as TeX
    fig = plot_attention(attention_maps(model, money), [tok.decode([i]) for i in money], path=str(tmp_path / "$.png"))
    assert " $$" in [label.get_text() for label in fig.axes[0].get_xticklabels()]
    for not_ids in ([1.7, 2.2, 3.9], [True, False], b"ab", 5):  # not truncated, not 1/0, not byte values
        with pytest.raises(TypeError, match="token ids must be (a sequence of )?integers"):
            attention_maps(model, not_ids)


def test_attention_maps_equal_transformers_output_attentions(tmp_path):
    """The maps are GPT-2's own: equal to transformers' `output_attentions` for the same weights (measured max
    |diff| 8.6e-7; maps without the 1/sqrt(d) scale differ by 0.44)."""
    torch = pytest.importorskip("torch")
    from conftest import make_hf_model

    hf = make_hf_model(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4, attn_implementation="eager")
    hf.save_pretrained(tmp_path / "hf")
    ids = np.array([[5, 9, 2, 33, 7, 1, 60, 12]])
    ours = attention_maps(GPT2.from_pretrained(tmp_path / "hf"), ids[0])
    with torch.no_grad():
        theirs = hf(torch.tensor(ids), output_attentions=True).attentions
    for layer, (a, b) in enumerate(zip(ours, theirs)):
        assert np.abs(a - b.numpy()[0]).max() <= 1e-5, layer
