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
    _, layers = model(np.array([ids]), return_attention=True)  # (normalised, causal: tests/test_layers.py)
    np.testing.assert_array_equal(maps, np.stack([np.asarray(m)[0] for m in layers]))
    fig = plot_attention(maps, [tok.decode([i]) for i in ids], layer=1, path=str(tmp_path / "attn.png"))
    assert len([ax for ax in fig.axes if ax.images]) == 2
    assert (tmp_path / "attn.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="layer must be in \\[0, 2\\)"):
        plot_attention(maps, ["x"] * len(ids), layer=2)
