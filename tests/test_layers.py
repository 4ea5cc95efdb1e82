import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_gpt2 import GPT2, MLP, CausalSelfAttention, GPT2Config, TransformerBlock
from tf_gpt2.variants import VariantBlock


@pytest.mark.parametrize(
    "layer",
    [
        CausalSelfAttention(n_embd=24, n_head=3, dropout=0.1, output_initializer_range=0.01),
        MLP(n_embd=24, activation="gelu"),
        TransformerBlock(n_embd=24, n_head=4, n_layer=3, activation="gelu"),
        VariantBlock(n_embd=24, n_head=4, n_layer=3, norm_position="post", learned_residual_scale=True),
    ],
)
def test_layer_builds_lazily_and_config_round_trips(layer):
    output = lambda out: out if isinstance(layer, MLP) else out[0]  # noqa: E731  attention/blocks: (x, cache)
    assert not layer.built
    x = keras.random.normal((2, 5, 24), seed=1)
    y = output(layer(x))
    assert layer.built and tuple(y.shape) == (2, 5, 24)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(output(clone(x)), y, atol=1e-6)


def test_attention_is_causal():
    attn = CausalSelfAttention(n_embd=16, n_head=2)
    x = np.random.RandomState(0).randn(1, 6, 16).astype("float32")
    y1 = np.asarray(attn(x)[0])
    x[0, 3] += 5.0  # change position 3
    y2 = np.asarray(attn(x)[0])
    np.testing.assert_allclose(y1[0, :3], y2[0, :3], atol=1e-6)
    assert np.abs(y1[0, 3:] - y2[0, 3:]).max() > 1e-3


def test_attention_probabilities_are_lower_triangular_and_normalised():
    attn = CausalSelfAttention(n_embd=16, n_head=2)
    probs = np.asarray(attn.attention_probs(keras.random.normal((2, 5, 16))))
    assert probs.shape == (2, 2, 5, 5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert np.all(np.triu(probs, k=1) == 0)


def test_mlp_is_gelu_tanh_4x():
    mlp = MLP(n_embd=8)
    x = np.random.RandomState(1).randn(3, 8).astype("float32")
    y = np.asarray(mlp(x))
    w1, b1 = mlp.c_fc.get_weights()
    w2, b2 = mlp.c_proj.get_weights()
    assert w1.shape == (8, 32)
    h = x @ w1 + b1
    gelu = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    np.testing.assert_allclose(y, gelu @ w2 + b2, atol=1e-5)


def test_pre_ln_block_is_residual():
    block = TransformerBlock(n_embd=8, n_head=2)
    x = np.random.RandomState(2).randn(1, 4, 8).astype("float32")
    y, cache = block(x)
    assert cache is None  # no cache given, none returned: the structure is always (x, cache)
    a = np.asarray(block.attn(block.ln_1(x))[0])
    h = x + a
    np.testing.assert_allclose(y, h + np.asarray(block.mlp(block.ln_2(h))), atol=1e-5)


def test_post_ln_and_learned_residual_scale():
    x = np.random.RandomState(3).randn(2, 4, 8).astype("float32")
    post = VariantBlock(n_embd=8, n_head=2, norm_position="post")
    y = np.asarray(post(x)[0])
    h = np.asarray(post.ln_1(x + np.asarray(post.attn(x)[0])))
    np.testing.assert_allclose(y, np.asarray(post.ln_2(h + np.asarray(post.mlp(h)))), atol=1e-5)

    scaled = VariantBlock(n_embd=8, n_head=2, learned_residual_scale=True)
    scaled(x)
    assert {w.name for w in scaled.trainable_weights} >= {"attn_scale", "mlp_scale"}
    scaled.attn_scale.assign(0.0)
    scaled.mlp_scale.assign(0.0)
    np.testing.assert_allclose(scaled(x)[0], x, atol=1e-6)  # zero-scaled branches leave the stream alone


def test_residual_projections_use_scaled_init():
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=256, n_layer=8, n_head=4)
    model = GPT2(cfg)
    block = model.h[0]
    assert np.std(block.attn.c_attn.kernel) == pytest.approx(0.02, rel=0.05)
    expected = 0.02 / np.sqrt(2 * cfg.n_layer)
    assert np.std(block.attn.c_proj.kernel) == pytest.approx(expected, rel=0.05)
    assert np.std(block.mlp.c_proj.kernel) == pytest.approx(expected, rel=0.05)
    assert np.all(np.asarray(block.attn.c_attn.bias) == 0)


def test_layers_compile_with_xla():
    model = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=50, n_positions=16))
    ids = np.random.RandomState(0).randint(0, 50, (2, 16)).astype("int32")
    compiled = tf.function(lambda t: model(t), jit_compile=True)
    np.testing.assert_allclose(compiled(ids), model(ids), atol=1e-5)


def test_fused_attention_equals_the_written_out_attention():
    """The plain call (keras.ops.dot_product_attention) and the written-out path (taken with a cache: one as long
    as the input changes nothing but the path) agree, causal alone and with left padding."""
    from tf_gpt2.layers import causal_mask

    keras.utils.set_random_seed(3)
    attn = CausalSelfAttention(n_embd=48, n_head=4)
    x = keras.random.normal((3, 7, 48))
    padding = np.array([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [0] * 6 + [1]], np.int32)  # left padding, as generate uses
    cache = {"key": np.zeros((3, 4, 7, 12), np.float32), "value": np.zeros((3, 4, 7, 12), np.float32)}
    for visible in (None, causal_mask(7, 7, visible=padding)):
        fused = np.asarray(attn(x, visible=visible)[0])
        explicit, _ = attn(x, visible=visible, cache=cache, cache_index=0)
        rows = padding.astype(bool) if visible is not None else np.ones((3, 7), bool)  # padding rows: don't care
        assert np.abs(fused - np.asarray(explicit))[rows].max() <= 1e-5


def test_a_block_decodes_step_by_step_with_its_cache_as_one_call():
    """A block given a cache and a slot but no mask sees every slot up to the query's own (the README's
    `x, cache = block(x, cache=cache, cache_index=i)`), as the model's cached calls do."""
    keras.utils.set_random_seed(4)
    block = TransformerBlock(n_embd=16, n_head=2)
    x = keras.random.normal((2, 6, 16))
    whole = np.asarray(block(x)[0])
    cache = {"key": np.zeros((2, 2, 6, 8), np.float32), "value": np.zeros((2, 2, 6, 8), np.float32)}
    steps = []
    for i in range(6):
        y, cache = block(x[:, i:i + 1], cache=cache, cache_index=i)
        steps.append(np.asarray(y))
    assert np.abs(np.concatenate(steps, axis=1) - whole).max() <= 1e-5


def test_residual_and_embedding_dropout_train_through_the_fused_attention(monkeypatch):
    """Only attention-probability dropout needs the written-out softmax: a model with dropout on its embeddings and
    residual branches alone (attn_pdrop 0) trains through keras.ops.dot_product_attention in every layer, and its
    dropout layers have GPT-2's three rates."""
    from keras import ops

    fused = []
    real = ops.dot_product_attention
    monkeypatch.setattr(ops, "dot_product_attention", lambda *args, **kwargs: fused.append(1) or real(*args, **kwargs))
    ids = np.random.RandomState(0).randint(0, 50, (2, 8)).astype("int32")
    split = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=50, dropout=0.1, embd_pdrop=0.2, attn_pdrop=0.0))
    assert (split.drop.rate, split.h[0].attn.resid_dropout.rate, split.h[0].mlp.resid_dropout.rate,
            split.h[0].attn.attn_dropout.rate) == (0.2, 0.1, 0.1, 0.0)
    split(ids, training=True)
    assert len(fused) == 2  # both layers
    one_rate = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=50, dropout=0.1))  # --dropout: all three
    assert one_rate.h[0].attn.attn_dropout.rate == 0.1
    one_rate(ids, training=True)
    assert len(fused) == 2  # attention dropout: the written-out path
    one_rate(ids)
    assert len(fused) == 4  # inference: fused again


def test_a_layer_saved_before_attention_dropout_was_split_keeps_its_meaning():
    """Layer configs written before `attention_dropout` existed (one `dropout` for both) load with attention dropout
    equal to `dropout`, as they were trained."""
    old = {k: v for k, v in TransformerBlock(n_embd=16, n_head=2, dropout=0.1).get_config().items()
           if k != "attention_dropout"}
    block = TransformerBlock.from_config(old)
    assert block.attn.attn_dropout.rate == block.attn.resid_dropout.rate == 0.1
