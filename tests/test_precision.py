"""The precision matrix: every sublayer computes in the model's dtype policy, and the model stays GPT-2 in it."""

import keras
import numpy as np
import pytest

from tf_gpt2 import GPT2, GPT2Config

# max |logits - float32 logits| allowed, for logits of magnitude ~1.25 (bfloat16 keeps 8 bits of mantissa, float16
# 11). Measured on an AVX-512 host: 5.4e-4 (mixed_float16), 4.4e-3 (bfloat16 and mixed_bfloat16); the bounds leave
# 3.4-3.7x for other CPUs' kernels, and the computed dtypes are checked below (a bound alone cannot see a
# sublayer quietly left in float32).
TOLERANCE = {"float32": 0.0, "mixed_float16": 2e-3, "mixed_bfloat16": 1.5e-2, "bfloat16": 1.5e-2}
CONFIG = GPT2Config.from_preset("gpt2-tiny", vocab_size=97, n_positions=32)
IDS = np.random.RandomState(0).randint(0, 97, (2, 16))


@pytest.fixture(scope="module")
def reference():
    keras.utils.set_random_seed(0)
    return GPT2(CONFIG)


def _in_policy(reference, policy):
    model = GPT2(CONFIG, dtype=policy)
    model.set_weights(reference.get_weights())
    return model


@pytest.mark.parametrize("policy", sorted(TOLERANCE))
def test_every_sublayer_computes_in_the_policy_and_logits_stay_close(reference, policy):
    model = _in_policy(reference, policy)
    assert {layer.dtype_policy.name for layer in model._flatten_layers()} == {policy}
    # mixed policies keep float32 master weights; "bfloat16" holds the weights themselves in bfloat16
    assert {w.dtype for w in model.weights} == {"bfloat16" if policy == "bfloat16" else "float32"}
    # The arithmetic itself, not only the policy names: each projection and the block compute in that dtype.
    x = keras.ops.cast(keras.random.normal((2, 5, CONFIG.n_embd), seed=1), model.compute_dtype)
    block = model.h[0]
    computed = {str(t.dtype) for t in (block.attn.c_attn(x), block.attn.c_proj(x), block.mlp.c_fc(x),
                                       block.ln_1(x), block(x)[0], model.wte(IDS))}
    assert {c.removeprefix("<dtype: '").removesuffix("'>") for c in computed} == {model.compute_dtype}
    head, computed = model.wte.call, []  # the tied head inside a call of the model (an Embedding is not autocast)
    model.wte.call = lambda inputs, reverse=False: computed.append(head(inputs, reverse)) or computed[-1]
    logits = np.asarray(model(IDS))
    del model.wte.call
    assert [keras.backend.standardize_dtype(t.dtype) for t in computed] == [model.compute_dtype] * 2  # lookup, head
    assert logits.dtype == np.float32
    error = np.abs(logits - np.asarray(reference(IDS))).max()
    print(f"{policy}: max |logit diff| {error:.1e} against float32, logits up to {np.abs(logits).max():.2f}")
    assert error <= TOLERANCE[policy]
    if policy != "float32":
        assert error > 0  # it really computed in 16 bits


@pytest.mark.parametrize("policy", sorted(TOLERANCE))
def test_cached_decode_equals_the_full_forward_in_that_precision(reference, policy):
    model = _in_policy(reference, policy)
    cache = model.init_cache(2, 16)
    assert cache[0]["key"].dtype == model.compute_dtype
    logits, cache = model.call_with_cache(IDS[:, :8], cache, 0)
    steps = [np.asarray(logits)]
    for t in range(8, 16):
        logits, cache = model.call_with_cache(IDS[:, t:t + 1], cache, t)
        steps.append(np.asarray(logits))
    full = np.asarray(model(IDS))
    # The two paths sum in different orders, so they may differ by one rounding step of the compute dtype
    # at the logits' magnitude (bfloat16 keeps 7 explicit mantissa bits, float16 10): nothing more.
    bits = {"float32": 23, "float16": 10, "bfloat16": 7}[model.compute_dtype]
    one_step = 2.0 ** (np.floor(np.log2(np.abs(full).max())) - bits)
    assert np.abs(np.concatenate(steps, axis=1) - full).max() <= max(1e-5, one_step)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16", "bfloat16"])
def test_save_load_keeps_the_policy_and_the_outputs(reference, policy, tmp_path):
    model = _in_policy(reference, policy)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert {layer.dtype_policy.name for layer in loaded._flatten_layers()} == {policy}
    assert [w.dtype for w in loaded.weights] == [w.dtype for w in model.weights]  # bfloat16's own: still 16 bits
    np.testing.assert_array_equal(np.asarray(loaded(IDS)), np.asarray(model(IDS)))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_one_compiled_fit_step_is_finite_and_float16_scales_the_loss(reference, policy):
    model = _in_policy(reference, policy)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.copy() for w in model.get_weights()]
    loss = model.fit(IDS[:, :-1], IDS[:, 1:], batch_size=2, epochs=1, verbose=0).history["loss"][-1]
    assert np.isfinite(loss)
    assert all(w.dtype == np.float32 for w in model.get_weights())  # float32 master weights
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")


def test_litert_export_of_a_mixed_model_is_float32(reference):
    pytest.importorskip("ai_edge_litert")
    from tf_gpt2.litert import LiteRTGenerator, litert_bytes

    model = _in_policy(reference, "mixed_bfloat16")
    gen = LiteRTGenerator(litert_bytes(model, cache_length=16, prefill_lengths=(4,)))
    logits = gen.feed(IDS[0, :6].tolist())
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, np.asarray(reference(IDS[:1, :6]))[0, -1], atol=1e-4)


def test_saved_model_of_a_mixed_model_returns_float32_logits(reference, tmp_path):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the in-graph tokenizer's ops)

    from tf_gpt2.export import export_saved_model

    model = _in_policy(reference, "mixed_bfloat16")
    served = tf.saved_model.load(export_saved_model(model, str(tmp_path / "m"), max_new_tokens_limit=8))
    length = np.full(len(IDS), np.shape(IDS)[1], np.int32)
    logits = served.signatures["serving_default"](token_ids=tf.constant(IDS, tf.int32),
                                                  length=tf.constant(length))["logits"]
    assert logits.dtype == tf.float32
    np.testing.assert_allclose(logits.numpy(), np.asarray(model(IDS)), atol=1e-2)
