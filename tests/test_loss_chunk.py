"""`GPT2Config(loss_chunk=N)`: the LM head and cross-entropy over N positions at a time, recomputed in the backward
pass. The same losses and gradients as the whole [batch, time, vocab] logits, through Keras' own train step, on
TensorFlow and on JAX."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tf_gpt2 import GPT2, GPT2Config

SHAPE = dict(vocab_size=61, n_positions=16, n_embd=32, n_layer=2, n_head=2, vocab_multiple=8)  # 64 rows, 3 padding


def _batches():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 61, (3, 13)).astype("int32") for _ in range(3)]


def _train(loss_chunk: int, dtype: str = "float32") -> tuple[list[float], list[np.ndarray], float]:
    """Three SGD steps (each weight moves by lr x its gradient, so equal weights mean equal gradients), then the
    validation loss."""
    keras.utils.set_random_seed(1)
    model = GPT2(GPT2Config(**SHAPE, loss_chunk=loss_chunk), dtype=dtype)
    model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = [float(model.train_on_batch(b[:, :-1], b[:, 1:])) for b in _batches()]
    batch = _batches()[0]
    return losses, model.get_weights(), float(model.evaluate(batch[:, :-1], batch[:, 1:], verbose=0))


@pytest.mark.parametrize("loss_chunk", [5, 12])  # 12 positions: chunks of 5, 5 and 2; or one chunk
def test_chunked_loss_equals_the_whole_loss_in_value_and_gradient(loss_chunk):
    losses, weights, evaluated = _train(0)
    chunked_losses, chunked_weights, chunked_evaluated = _train(loss_chunk)
    np.testing.assert_allclose(chunked_losses, losses, rtol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(chunked_weights, weights)) <= 1e-5
    assert abs(chunked_evaluated - evaluated) <= 1e-5 * evaluated  # evaluation takes the whole head


def test_chunked_loss_under_mixed_bfloat16_follows_the_whole_loss():
    losses, _, _ = _train(0, "mixed_bfloat16")
    chunked, _, _ = _train(5, "mixed_bfloat16")
    np.testing.assert_allclose(chunked, losses, rtol=2e-3)  # the same bfloat16 matmuls, summed in another order


def test_chunked_loss_refuses_what_it_cannot_compute():
    model = GPT2(GPT2Config(**SHAPE, loss_chunk=4))
    for kwargs in (dict(loss="sparse_categorical_crossentropy"),  # probabilities, not logits
                   dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])):
        with pytest.raises(ValueError, match="loss_chunk computes sparse categorical cross-entropy from logits"):
            model.compile(optimizer="sgd", **kwargs)
    with pytest.raises(ValueError, match="loss_chunk must be 0"):
        GPT2Config(loss_chunk=-1)


def test_chunked_loss_on_jax_equals_the_whole_loss():
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import keras
        assert keras.backend.backend() == "jax"
        from test_loss_chunk import _train
        (losses, weights, _), (chunked, chunked_weights, _) = _train(0), _train(5)
        print(json.dumps({{"losses": losses, "chunked": chunked,
                           "weights": max(float(np.abs(a - b).max()) for a, b in zip(weights, chunked_weights))}}))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["chunked"], result["losses"], rtol=1e-5)
    assert result["weights"] <= 1e-5
