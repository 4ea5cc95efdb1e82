"""The model core runs on the JAX backend (how GPU/XLA runs are verified) without TensorFlow."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tf_gpt2 import GPT2, GPT2Config

pytest.importorskip("jax")


def test_forward_and_generate_on_jax_match_tensorflow(tmp_path):
    model = GPT2(GPT2Config(vocab_size=200, n_positions=32, n_embd=32, n_layer=2, n_head=4))
    model.save_pretrained(tmp_path / "m")
    ids = np.random.RandomState(0).randint(0, 200, (2, 10))
    np.save(tmp_path / "ids.npy", ids)
    expected_logits = np.asarray(model(ids))
    expected_ids = model.generate([5, 6, 7], max_new_tokens=6, temperature=0.8, top_k=20, seed=2, stop_ids=[])
    script = textwrap.dedent(f"""
        import sys, json, numpy as np
        sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
        import keras
        assert keras.backend.backend() == "jax"
        from tf_gpt2 import GPT2
        from tf_gpt2.checkpoints import load_hf
        model = load_hf({str(tmp_path / "m")!r})
        np.save({str(tmp_path / "jax.npy")!r}, np.asarray(model(np.load({str(tmp_path / "ids.npy")!r}))))
        print(json.dumps(model.generate([5, 6, 7], max_new_tokens=6, temperature=0.8, top_k=20, seed=2, stop_ids=[])))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert np.abs(np.load(tmp_path / "jax.npy") - expected_logits).max() <= 1e-4
    assert run.stdout.strip().splitlines()[-1] == str(expected_ids).replace(" ", "").replace(",", ", ")
