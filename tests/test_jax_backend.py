"""The model core runs on the JAX backend (how GPU/XLA runs are verified) without TensorFlow: forward, generate,
evaluation and a compiled train step (the path of benchmarks/gpu.py)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tf_gpt2 import GPT2, GPT2Config

pytest.importorskip("jax")

# Each filter and the penalty, alone and together, and the draws they change (on a peaked model: near-flat logits
# would hide them).
SAMPLINGS = [dict(temperature=0.8, top_k=20), dict(temperature=0.8), dict(temperature=0.7, top_p=0.5),
             dict(temperature=0.7), dict(temperature=0.9, top_k=30, top_p=0.9, repetition_penalty=1.3),
             dict(repetition_penalty=1.5), dict()]


def test_forward_generate_eval_and_train_step_on_jax_match_tensorflow(tmp_path):
    model = GPT2(GPT2Config(vocab_size=200, n_positions=32, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2))
    model.save_pretrained(tmp_path / "m")
    ids = np.random.RandomState(0).randint(0, 200, (2, 10))
    np.save(tmp_path / "ids.npy", ids)
    expected_logits = np.asarray(model(ids))
    expected_ids = [model.generate([5, 6, 7], max_new_tokens=12, seed=2, stop_ids=[], **sampling)
                    for sampling in SAMPLINGS]
    top_k, sampled, top_p, cooler, _, penalized, greedy = expected_ids
    assert top_k != sampled and top_p != cooler and penalized != greedy
    from tf_gpt2.evaluation import evaluate

    expected_nll = evaluate(model, np.arange(40) % 200, context=8, stride=4).nll
    expected_loss = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(ids[:, 1:],
                                                                                        expected_logits[:, :-1]))
    script = textwrap.dedent(f"""
        import sys, json, numpy as np
        sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
        import keras
        assert keras.backend.backend() == "jax"
        from tf_gpt2 import GPT2
        model = GPT2.from_pretrained({str(tmp_path / "m")!r})
        np.save({str(tmp_path / "jax.npy")!r}, np.asarray(model(np.load({str(tmp_path / "ids.npy")!r}))))
        generated = [model.generate([5, 6, 7], max_new_tokens=12, seed=2, stop_ids=[], **sampling)
                     for sampling in {SAMPLINGS!r}]
        from tf_gpt2.evaluation import evaluate
        nll = evaluate(model, np.arange(40) % 200, context=8, stride=4).nll
        ids = np.load({str(tmp_path / "ids.npy")!r})
        before = np.asarray(model(ids))
        half = model.with_dtype("mixed_bfloat16")  # trained apart: its train step frees (donates) only its own arrays
        half.compile(optimizer="adamw", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        half.train_on_batch(ids[:, :-1], ids[:, 1:])
        copy_kept = float(np.abs(np.asarray(model(ids)) - before).max())
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=True,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses = [float(model.train_on_batch(ids[:, :-1], ids[:, 1:])) for _ in range(3)]  # each: before its update
        model.wpe.trainable = False  # Keras' JAX step takes no subset of what the optimizer was built for
        try:
            model.train_on_batch(ids[:, :-1], ids[:, 1:])
            frozen_refusal = ""
        except ValueError as error:
            frozen_refusal = str(error)
        model.wpe.trainable = True
        explicit = model.call_with_cache(ids, model.init_cache(*ids.shape), 0)[0]  # the written-out attention
        fused, explicit = np.asarray(model(ids)), np.asarray(explicit)
        import jax
        from tf_gpt2 import GPT2Config
        padded = GPT2(GPT2Config(vocab_size=10, vocab_multiple=16, n_positions=8, n_embd=8, n_layer=1, n_head=2))
        whole = GPT2(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2))
        whole.set_weights(padded.get_weights())
        unchecked = np.asarray(jax.jit(padded)(np.array([[1, 12], [-1, 2], [1, 16]])))  # a padding row, -1, the end
        rows = np.asarray(whole(np.array([[1, 12], [15, 2]])))[..., :10]
        tokens = keras.Input((None,), dtype="int32")  # in a functional model: a symbolic length, not refused
        functional = float(np.abs(np.asarray(keras.Model(tokens, model(tokens))(ids)) - fused).max())
        print(json.dumps({{"nll": nll, "losses": losses, "fused_vs_explicit": float(np.abs(fused - explicit).max()),
                          "functional": functional, "copy_kept": copy_kept, "frozen_refusal": frozen_refusal,
                          "unchecked_vs_rows": float(np.abs(unchecked[:2] - rows).max()),
                          "past_the_end_nan": bool(np.isnan(unchecked[2]).all())}}))
        print(json.dumps(generated))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert np.abs(np.load(tmp_path / "jax.npy") - expected_logits).max() <= 1e-4
    lines = run.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == expected_ids
    jax_results = json.loads(lines[-2])
    assert abs(jax_results["nll"] - expected_nll) <= 1e-4 * expected_nll  # evaluation runs on JAX too
    assert jax_results["fused_vs_explicit"] <= 1e-5  # jax.nn.dot_product_attention == the written-out attention
    assert jax_results["functional"] <= 1e-6
    assert jax_results["copy_kept"] == 0  # (the model's arrays had been deleted: "Array has been deleted")
    # A layer frozen after the optimizer was built: said, before Keras' "1:1 to the trainable variables" in the step
    assert "since then 1 weight that trained no longer does" in jax_results["frozen_refusal"]
    assert "compile the model again with a new optimizer" in jax_results["frozen_refusal"]
    # A compiled call of one's own does not check ids (docs/generation.md): a padding row of `vocab_multiple` and a
    # negative id read rows of the table; past the end, NaN in every position of the row (attention's zero weights
    # times its NaN values).
    assert jax_results["unchecked_vs_rows"] <= 1e-5 and jax_results["past_the_end_nan"]
    first, *later = jax_results["losses"]  # a compiled JAX train step (the GPU benchmark's path) learns
    assert abs(first - expected_loss) <= 1e-4 * expected_loss and later[-1] < first


def test_a_jax_run_keeps_tensorflow_off_the_gpus_and_a_tensorflow_run_is_unchanged(tmp_path, monkeypatch):
    """tf.data is TensorFlow's: a JAX run that reads its data through it hides every GPU from TensorFlow before it
    finds its devices (otherwise it maps most of each GPU's memory, which JAX needs); on the TensorFlow backend the
    GPUs stay TensorFlow's."""
    import tensorflow as tf

    from tf_gpt2.data import prepare
    from tf_gpt2.devices import tensorflow

    (tmp_path / "t.txt").write_text("to be or not to be, that is the question. " * 40)
    prepare([str(tmp_path / "t.txt")], str(tmp_path / "data"), verbose=False)
    script = textwrap.dedent(f"""
        import tensorflow as tf
        hidden = []
        set_visible = tf.config.set_visible_devices
        tf.config.set_visible_devices = lambda devices, kind=None: hidden.append((list(devices), kind)) or \\
            set_visible(devices, kind)
        from tf_gpt2.data import TokenShards
        batch = next(iter(TokenShards({str(tmp_path / "data")!r}).dataset(block_size=8, batch_size=2)))
        assert tuple(batch[0].shape) == (2, 8)
        print(hidden, tf.config.get_visible_devices("GPU"), [d.device_type for d in tf.config.get_visible_devices()])
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[([], 'GPU')] [] ['CPU']"
    calls = []
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda *args: calls.append(args))
    assert tensorflow() is tf and calls == []  # this process runs the TensorFlow backend
