"""Past one device on the JAX backend, with Keras' own `keras.distribution`: ModelParallel over a 2x2 mesh with
`GPT2.get_layout_map` and DataParallel over 4 devices train to the weights of one device from the same start, and
the big weights (and their Adam moments) are really split. Four virtual CPU devices, in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent("""
    import json
    import numpy as np, keras, jax
    assert keras.backend.backend() == "jax" and len(jax.devices()) == 4
    from tf_gpt2 import GPT2, GPT2Config

    cfg = GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    data = np.random.RandomState(0).randint(0, 128, (16, 17)).astype("int32")
    keras.utils.set_random_seed(0)
    start = GPT2(cfg).get_weights()

    def fit(distribution):
        keras.distribution.set_distribution(distribution)
        model = GPT2(cfg)
        model.set_weights(start)
        model.compile(optimizer=keras.optimizers.AdamW(1e-2), jit_compile=True,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(data[:, :-1], data[:, 1:], batch_size=8, epochs=3, shuffle=False, verbose=0)
        return model

    one = fit(None)
    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((2, 2), ("batch", "model"), devices)
    sharded = fit(keras.distribution.ModelParallel(layout_map=GPT2.get_layout_map(mesh), batch_dim_name="batch"))
    replicated = fit(keras.distribution.DataParallel(devices=devices))
    generated = (sharded.generate([1, 2, 3], max_new_tokens=6, stop_ids=[]) ==
                 one.generate([1, 2, 3], max_new_tokens=6, stop_ids=[]))  # while the distribution is set
    import tempfile
    saved = tempfile.mkdtemp()
    sharded.save_pretrained(saved)  # the whole weights, gathered from the devices
    sharded.save(f"{saved}/model.keras")
    keras.distribution.set_distribution(None)
    own = np.asarray(sharded(data[:2]))
    reloaded = float(np.abs(np.asarray(GPT2.from_pretrained(saved)(data[:2])) - own).max())
    reloaded_keras = float(np.abs(np.asarray(keras.models.load_model(f"{saved}/model.keras")(data[:2])) - own).max())
    moved = float(max(np.abs(a - b).max() for a, b in zip(start, one.get_weights())))
    diff = lambda m: float(max(np.abs(a - b).max() for a, b in zip(one.get_weights(), m.get_weights())))
    split = lambda v: not v.value.sharding.is_fully_replicated  # noqa: E731
    print(json.dumps({
        "moved": moved, "reloaded": reloaded, "reloaded_keras": reloaded_keras,
        "model_parallel": diff(sharded), "data_parallel": diff(replicated),
        "split": {v.path: split(v) for v in sharded.weights},
        "split_moments": {v.path: split(v) for v in sharded.optimizer.variables
                          if any(name in v.path for name in ("wte", "c_attn_kernel", "c_fc_kernel", "c_proj_kernel"))},
        "generate": generated,
    }))
""")


def test_model_and_data_parallel_fits_equal_one_device():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=4"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # Measured: 1.2e-5 (model parallel) and 9.5e-6 (data parallel) after 6 AdamW steps that moved the weights by
    # 0.06: the bound sits well below what a step computed on other data or with other gradients would move.
    assert result["moved"] > 1e-2
    assert result["model_parallel"] <= 1e-4 and result["data_parallel"] <= 1e-4, result
    split = {path.split("/", 1)[1] for path, is_split in result["split"].items() if is_split}  # without "gpt2_N/"
    assert split == {"wte/embeddings"} | {f"h_{i}/{layer}" for i in range(2) for layer in (
        "attn/c_attn/kernel", "attn/c_attn/bias", "attn/c_proj/kernel", "mlp/c_fc/kernel", "mlp/c_fc/bias",
        "mlp/c_proj/kernel")}, split
    assert result["split_moments"] and all(result["split_moments"].values())  # Adam's moments follow
    assert result["generate"]  # a model built under the distribution still generates the same tokens
    assert result["reloaded"] <= 1e-5  # and saves in full: reloaded on one device, its logits are its own
    assert result["reloaded_keras"] <= 1e-5  # so does model.save's .keras file
