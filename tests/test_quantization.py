"""Keras' int8 weight quantization (`model.quantize("int8")`): generate, `.keras` save/load and the SavedModel."""

import os
import sys
import warnings

import keras
import numpy as np
import pytest

from tf_gpt2 import GPT2
from tf_gpt2.tokenizer import EOT_ID


@pytest.fixture(scope="module")
def int8(trained):
    model = GPT2(trained.config)
    model.set_weights(trained.get_weights())
    model.quantize("int8")
    return model


def test_int8_quantizes_every_projection_and_the_tied_embedding(int8):
    dense = [d for b in int8.h for d in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
    assert all(layer.quantization_mode == "int8" for layer in dense + [int8.wte, int8.wpe])
    assert int8.wte.embeddings.dtype == "int8" and int8.quantization == "int8"


def test_quantizing_collects_garbage_once_not_after_each_kernel_it_drops(monkeypatch):
    """Keras collects garbage after each variable a layer drops (0.2 s or more a time in a process holding
    TensorFlow: GPT-2 124M's int8 quantization took 12 s, 2 s collected once); put back as it was."""
    import gc
    import threading

    from tf_gpt2 import GPT2Config
    from tf_gpt2.garbage import collected_once

    calls = []
    counted = lambda generation=2: calls.append(generation) or 0  # noqa: E731
    monkeypatch.setattr(gc, "collect", counted)
    model = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=50, n_positions=16))
    inside, release = threading.Event(), threading.Event()

    def another_quantization():
        with collected_once():
            inside.set()
            release.wait(60)

    other = threading.Thread(target=another_quantization)
    other.start()
    assert inside.wait(60)
    gc.collect()  # this thread's collections run meanwhile
    model.quantize("int8")  # and its own quantization collects once, at its end
    assert model.h[1].mlp.c_proj.quantization_mode == "int8" and len(calls) == 2
    release.set()
    other.join()
    assert len(calls) == 3 and gc.collect is counted


def test_int8_greedy_choices_agree_with_float_on_a_trained_model(trained, int8, held_out):
    """Teacher-forced on held-out text (free-running paths part after the first close call, so they say less)."""
    text = np.array([held_out[:64]])
    reference, quantized = np.asarray(trained(text)), np.asarray(int8(text))
    agreement = np.mean(quantized.argmax(-1) == reference.argmax(-1))
    print(f"int8 (Keras): {agreement:.0%} of teacher-forced greedy choices equal float32's; "
          f"max |logit diff| {np.abs(quantized - reference).max():.3f}")
    assert agreement >= 0.9
    # The logits themselves: mean |int8 - float32| over the logits' spread. Measured 0.006; a float model with 2%
    # (5%) noise on every weight gives 0.026 (0.064) and still agrees on 98% (97%) of the greedy choices.
    assert np.abs(quantized - reference).mean() / reference.std() <= 0.02
    prompt = [EOT_ID] + held_out[100:110]
    float_ids = trained.generate(prompt, max_new_tokens=16, stop_ids=[])
    int8_ids = int8.generate(prompt, max_new_tokens=16, stop_ids=[])
    assert len(int8_ids) == 16 and int8_ids[0] == float_ids[0]  # generate runs quantized


def test_int8_model_round_trips_through_keras_and_saved_model(int8, tmp_path):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the in-graph tokenizer's ops)

    from tf_gpt2.export import export_saved_model

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
    from tf_serving import xla_only_ops

    ids = np.array([[464, 3290, 318, 257, 11, 290]], np.int32)
    int8.save(tmp_path / "int8.keras")
    loaded = keras.models.load_model(tmp_path / "int8.keras")
    assert loaded.quantization == "int8" and loaded.wte.embeddings.dtype == "int8"
    np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(int8(ids)))
    path = export_saved_model(int8, str(tmp_path / "served"), max_new_tokens_limit=8)
    assert xla_only_ops(path) == []  # TF Serving runs it with XLA compilation off
    served = tf.saved_model.load(path)
    logits = served.signatures["serving_default"](token_ids=tf.constant(ids), length=tf.constant([ids.shape[1]]))
    np.testing.assert_allclose(logits["logits"].numpy(), np.asarray(int8(ids)), atol=1e-4)


def test_quantized_model_refuses_float_only_formats(int8, tmp_path):
    with pytest.raises(ValueError, match="Hugging Face checkpoints hold float weights"):
        int8.save_pretrained(tmp_path / "hf")
    pytest.importorskip("ai_edge_litert")
    from tf_gpt2.litert import litert_bytes

    with pytest.raises(ValueError, match="export the float model with quantize='int8'"):
        litert_bytes(int8, cache_length=16)


def test_quantize_keeps_its_config_through_a_saved_file_and_refuses_a_filter(tmp_path):
    """A model quantizes whole, with settings a reload repeats: `filters` would leave layers float that a reload
    quantizes (an unloadable file); weights-only int8 (no input quantizer) reloaded with Keras' default one."""
    from keras.quantizers import Int8QuantizationConfig

    from tf_gpt2 import GPT2Config

    model = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=50, n_positions=16))
    with pytest.raises(ValueError, match="GPT2.quantize quantizes every Dense and Embedding, got filters='c_fc'"):
        model.quantize("int8", filters="c_fc")
    with pytest.raises(ValueError, match="GPT2.quantize takes Keras' int8, int4 and float8 modes, got 'gptq'"):
        model.quantize("gptq", config=keras.quantizers.GPTQConfig(dataset=["text"], tokenizer=lambda text: [1]))
    assert model.quantization is None and model.h[0].mlp.c_fc.quantization_mode is None
    float8 = GPT2(model.config)
    with warnings.catch_warnings(record=True) as said:  # the projections only, as the docstring says, in silence
        warnings.simplefilter("always")                  # (Keras' "Invalid quantization mode" for the embeddings)
        float8.quantize("float8")
    assert not [w for w in said if "quantization mode" in str(w.message)], [str(w.message) for w in said]
    assert float8.h[0].mlp.c_fc.quantization_mode == "float8" and float8.wte.quantization_mode is None
    from tf_gpt2.training import enable_lora

    scales = [v.path for v in float8.trainable_variables if v.overwrite_with_gradient]  # each step's amax history
    enable_lora(float8, 2)  # adapters trained alone, float8's scales still kept up to date (frozen, they stayed 1)
    assert scales and [v.path for v in float8.trainable_variables if v.overwrite_with_gradient] == scales
    int4 = GPT2(model.config)
    int4.quantize("int4")
    enable_lora(int4, 2)
    ids = np.array([[1, 2, 3, 4, 5]])
    for layer in (block.attn.c_attn for block in int4.h):  # adapters that have learned something
        layer.lora_kernel_b.assign(np.random.RandomState(0).normal(0, 0.05, layer.lora_kernel_b.shape))
    with pytest.warns(UserWarning, match=r"this model is quantized \(int4\) and has LoRA adapters: Keras saves them "
                                         r"merged into the quantized kernels, quantized again, so what loads from .*"
                                         r"int4-lora.keras computes other logits than this model"):
        int4.save(tmp_path / "int4-lora.keras")  # (its packed kernel failed in a float32 merge)
    merged = keras.models.load_model(tmp_path / "int4-lora.keras")  # (what the warning says)
    assert np.abs(np.asarray(merged(ids)) - np.asarray(int4(ids))).max() > 1e-3
    default = GPT2(model.config)
    default.set_weights(model.get_weights())
    default.quantize("int8")
    model.quantize(config=Int8QuantizationConfig(activation_quantizer=None))  # weights only
    assert model.quantization == "int8"
    assert np.abs(np.asarray(model(ids)) - np.asarray(default(ids))).max() > 1e-4  # the inputs are not quantized
    model.save(tmp_path / "q.keras")
    reloaded = keras.models.load_model(tmp_path / "q.keras")
    np.testing.assert_allclose(np.asarray(reloaded(ids)), np.asarray(model(ids)), atol=1e-6)
    bfloat16 = model.with_dtype("bfloat16")  # weights-only still (its logits alone would not tell: ~1e-3 apart)
    assert all(layer.inputs_quantizer is None for block in bfloat16.h
               for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj))
    assert default.h[0].mlp.c_fc.inputs_quantizer is not None  # (Keras' default int8 quantizes the inputs)
    np.testing.assert_allclose(np.asarray(bfloat16(ids)), np.asarray(model(ids)), atol=0.05)
