"""The training loss: GPT2 computes Keras' sparse categorical cross-entropy from logits itself (`token_cross_entropy`,
its gradient written out), over the whole [batch, time, vocab] logits or with `GPT2Config(loss_chunk=N)` N positions at
a time, recomputed in the backward pass. Both give Keras' own losses and gradients, through Keras' train step, on
TensorFlow and on JAX."""

import functools
import json
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

from tf_gpt2 import GPT2, GPT2Config

SHAPE = dict(vocab_size=61, n_positions=16, n_embd=32, n_layer=2, n_head=2, vocab_multiple=8)  # 64 rows, 3 padding


def _batches():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 61, (3, 13)).astype("int32") for _ in range(3)]


def keras_cross_entropy(y_true, y_pred):
    """Keras' own cross-entropy: a plain function, which GPT2 leaves to Keras."""
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)


@functools.lru_cache(maxsize=None)  # a pure function of its arguments (seeded): the tests share the references
def _train(loss_chunk: int, dtype: str = "float32", loss=None, weighted: bool = False,
           ) -> tuple[list[float], list[np.ndarray], float]:
    """Three SGD steps (each weight moves by lr x its gradient, so equal weights mean equal gradients), then the
    validation loss. `weighted`: each token weighted 0, 1 or 2."""
    keras.utils.set_random_seed(1)
    model = GPT2(GPT2Config(**SHAPE, loss_chunk=loss_chunk), dtype=dtype)
    model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=True,
                  loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    weights = np.random.default_rng(2).integers(0, 3, (3, 12)).astype("float32") if weighted else None
    losses = [float(model.train_on_batch(b[:, :-1], b[:, 1:], sample_weight=weights)) for b in _batches()]
    batch = _batches()[0]
    return losses, model.get_weights(), float(model.evaluate(batch[:, :-1], batch[:, 1:], verbose=0))


def _out_of_vocabulary_losses() -> dict[str, float]:
    """A training step's loss with one target outside the vocabulary: a padding row of the head (61), past the head
    (64), negative (-1), or none; whole head and chunked. From a generator, whose values Keras' loop reads as they
    come (arrays are checked first: `test_targets_outside_the_vocabulary_are_refused_where_they_count`)."""
    batch, losses = _batches()[0], {}
    for loss_chunk in (0, 5):
        keras.utils.set_random_seed(0)
        model = GPT2(GPT2Config(**SHAPE, loss_chunk=loss_chunk))
        model.compile(optimizer="sgd", jit_compile=True,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        initial, mask = model.get_weights(), np.ones((3, 12), "float32")
        mask[1, 4] = 0  # that token weighs nothing: its target may be a placeholder, as Hugging Face's -100
        for target, weights in ((61, None), (64, None), (-1, None), (None, None), (-100, mask), ("masked", mask)):
            targets = batch[:, 1:].copy()
            targets[1, 4] = target if isinstance(target, int) else targets[1, 4]
            model.set_weights(initial)
            name = f"{loss_chunk} {target}{' masked' if weights is not None else ''}"
            step = (batch[:, :-1], targets) if weights is None else (batch[:, :-1], targets, weights)
            history = model.fit((s for s in [step]), steps_per_epoch=1, shuffle=False, verbose=0).history
            losses[name] = history["loss"][0]
            # The step's update: NaN too for a target that counts, as TensorFlow's own gradient is.
            losses[f"{name} weights"] = float(sum(np.sum(w) for w in model.get_weights()))
    return losses


def _check_out_of_vocabulary(losses: dict[str, float]) -> None:
    assert all(np.isnan(loss) == (key.split()[1] in ("61", "64", "-1")) for key, loss in losses.items()), losses
    for chunk in (0, 5):  # a masked placeholder changes nothing: the same loss and update as a masked real target
        assert losses[f"{chunk} -100 masked"] == losses[f"{chunk} masked masked"], losses
        assert losses[f"{chunk} -100 masked weights"] == losses[f"{chunk} masked masked weights"], losses


def test_targets_outside_the_vocabulary_are_refused_where_they_count():
    """Given as arrays, targets are checked as ids are: one outside the vocabulary trained to a NaN loss and weights
    without a word, a float one was truncated; a placeholder whose sample weight is 0 is taken."""
    model = GPT2(GPT2Config(**SHAPE))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _batches()[0][:, :-1], _batches()[0][:, 1:].copy()
    y[1, 4] = -100
    weights = np.ones(y.shape, "float32")
    loops = (lambda **given: model.fit(x, y, verbose=0, **given),
             lambda **given: model.evaluate(x, y, verbose=0, **given),
             lambda **given: model.train_on_batch(x, y, **given),
             lambda **given: model.test_on_batch(x, y, **given),
             lambda sample_weight: model.train_on_batch(x, y, sample_weight=sample_weight[..., None]),  # [b, t, 1]
             lambda sample_weight: model.fit(x[:1], y[:1] * 0, validation_data=(x, y, sample_weight), verbose=0))
    for loop in loops:
        with pytest.raises(ValueError, match=r"^(targets \(y\)|validation_data's targets) must be token ids in "
                                             r"\[0, 61\) where their sample weight is not 0, got \[-100\]: a "
                                             r"placeholder .* needs a sample_weight") as refused:
            loop(sample_weight=weights)
    assert str(refused.value).startswith("validation_data's targets")  # the last loop's: named as such
    for mask in (weights * (y != -100), y != -100):  # (a bool mask, `y != -100`, failed on TensorFlow)
        assert np.isfinite(model.train_on_batch(x, y, sample_weight=mask))
    with pytest.raises(TypeError, match="targets \\(y\\) must be integers, got dtype float64"):
        model.fit(x, _batches()[0][:, 1:] + np.float32(0.7), verbose=0)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100))
    assert np.isfinite(model.train_on_batch(x, y))  # a loss of Keras' that reads the placeholder itself takes it


def test_a_target_outside_the_vocabulary_gives_a_nan_loss_and_update():
    """Not a clamped or wrapped logit's loss (XLA reads index 64 as 63, JAX reads -1 as 60): NaN, which stops
    `tf-gpt2 train` and shows in `fit`'s logs, as TensorFlow's own cross-entropy under XLA gives; without XLA,
    TensorFlow's gather names the index."""
    import tensorflow as tf

    from tf_gpt2.model import token_cross_entropy

    _check_out_of_vocabulary(_out_of_vocabulary_losses())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[1,0\] = 4 is not in \[0, 4\)"):
        token_cross_entropy(np.zeros((2, 4), "float32"), np.array([0, 4]))


@pytest.mark.parametrize("weighted", [False, True])
def test_the_models_cross_entropy_equals_keras_in_value_and_gradient(weighted):
    losses, weights, evaluated = _train(0, loss=keras_cross_entropy, weighted=weighted)
    ours, our_weights, our_evaluated = _train(0, weighted=weighted)
    np.testing.assert_allclose(ours, losses, rtol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(our_weights, weights)) <= 1e-6
    assert abs(our_evaluated - evaluated) <= 1e-6 * evaluated


@pytest.mark.parametrize("loss", [
    "sparse_categorical_crossentropy", "SparseCategoricalCrossentropy", keras.losses.SparseCategoricalCrossentropy,
    keras.losses.SparseCategoricalCrossentropy(), keras.losses.sparse_categorical_crossentropy,
    ["categorical_crossentropy"], "crossentropy", "CE"])  # (Keras picks the sparse one for these, from probabilities)
def test_a_cross_entropy_that_reads_probabilities_is_refused(loss):
    """Keras' cross-entropies by name, and by default, read probabilities: over GPT2's logits they would train on a
    wrong objective (from a loss above log(vocab)) without a word."""
    with pytest.raises(ValueError, match=r"GPT2 returns logits, and loss=.* reads probabilities \(from_logits=False\)"):
        GPT2(GPT2Config(**SHAPE)).compile(optimizer="sgd", loss=loss)


@pytest.mark.parametrize("kind, given", [
    ("loss", "binary_crossentropy"), ("loss", "bce"), ("loss", keras.losses.BinaryCrossentropy(from_logits=True)),
    ("loss", keras.losses.BinaryFocalCrossentropy()), ("metrics", ["bce"]),
    ("metrics", [keras.metrics.BinaryCrossentropy(from_logits=True)])])
def test_a_binary_cross_entropy_is_refused_as_no_loss_of_tokens(kind, given):
    """A binary cross-entropy scores one yes or no per output: by name it failed deep in Keras on the ranks, as an
    object it was told to take from_logits=True, which then failed the same way."""
    settings = {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True), kind: given}
    with pytest.raises(ValueError, match=rf"GPT2 predicts one of its vocabulary's tokens, and {kind}=.* is a binary "
                                         r"cross-entropy"):
        GPT2(GPT2Config(**SHAPE)).compile(**settings)


def _keras_hub_perplexity(**kwargs):
    import keras_hub

    return keras_hub.metrics.Perplexity(**kwargs)


@pytest.mark.parametrize("metrics", [
    lambda: ["sparse_categorical_crossentropy"], lambda: [keras.metrics.SparseCategoricalCrossentropy()],
    lambda: {"output": ["accuracy", keras.metrics.categorical_crossentropy]}, _keras_hub_perplexity])
def test_a_metric_that_reads_probabilities_is_refused(metrics):
    """A metric reading probabilities over GPT2's logits reports a wrong figure every epoch (keras-hub's Perplexity
    by default: tens of thousands where exp(loss) is about 60): refused as such a loss is; from_logits=True reports
    the loss's own."""
    metrics = metrics()
    for name in ("metrics", "weighted_metrics"):
        with pytest.raises(ValueError, match=fr"GPT2 returns logits, and {name}=.* reads probabilities"):
            GPT2(GPT2Config(**SHAPE)).compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                              **{name: metrics})
    model = GPT2(GPT2Config(**SHAPE))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy", _keras_hub_perplexity(from_logits=True),
                           keras.metrics.SparseCategoricalCrossentropy(from_logits=True)])
    batch = _batches()[0]
    figures = model.evaluate(batch[:, :-1], batch[:, 1:], return_dict=True, verbose=0)
    assert figures["perplexity"] == pytest.approx(np.exp(figures["loss"]), rel=1e-5)
    assert figures["sparse_categorical_crossentropy"] == pytest.approx(figures["loss"], rel=1e-5)
    class Unsaved(keras.metrics.Mean):  # a metric of one's own, never to be saved: read, not serialized
        def get_config(self):
            raise NotImplementedError("not serializable")

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        GPT2(GPT2Config(**SHAPE)).compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[
            keras.metrics.MeanMetricWrapper(functools.partial(keras.losses.sparse_categorical_crossentropy,
                                                              from_logits=True)),
            keras.metrics.MeanMetricWrapper(lambda y, p: keras.ops.mean(p), name="mean_logit"), Unsaved()])
    assert not [w for w in warned if "lambda" in str(w.message)]  # (serializing a lambda's wrapper warned)


class DoubledCrossEntropy(keras.losses.SparseCategoricalCrossentropy):
    def call(self, y_true, y_pred):
        return 2 * super().call(y_true, y_pred)


def test_other_losses_are_left_to_keras():
    """Loss weights, a subclass with its own `call`, another axis: Keras computes them, as it would for any model."""
    batch = _batches()[0]

    def loss_of(loss, loss_weights=None):
        keras.utils.set_random_seed(0)
        model = GPT2(GPT2Config(**SHAPE))
        model.compile(loss=loss, loss_weights=loss_weights)
        return float(model.test_on_batch(batch[:, :-1], batch[:, 1:]))

    plain = loss_of(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert loss_of(keras.losses.SparseCategoricalCrossentropy(from_logits=True), 2.0) == pytest.approx(2 * plain,
                                                                                                      rel=1e-6)
    assert loss_of(DoubledCrossEntropy(from_logits=True)) == pytest.approx(2 * plain, rel=1e-6)
    with pytest.raises(ValueError, match="Only axis=-1"):  # Keras' own refusal, not a loss over the wrong axis
        loss_of(keras.losses.SparseCategoricalCrossentropy(from_logits=True, axis=1))
    with pytest.raises(ValueError, match="no loss weights"):
        GPT2(GPT2Config(**SHAPE, loss_chunk=4)).compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), loss_weights=2.0)


def test_token_cross_entropy_gradient_is_softmax_minus_the_target():
    import tensorflow as tf

    from tf_gpt2.model import token_cross_entropy

    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 3, 7)).astype("float32") * 4)
    targets, upstream = rng.integers(0, 7, (2, 3)), rng.normal(size=(2, 3)).astype("float32")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        ours = token_cross_entropy(logits, targets)
        theirs = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
        ours_weighted, theirs_weighted = (tf.reduce_sum(v * upstream) for v in (ours, theirs))
    np.testing.assert_allclose(ours, theirs, atol=2e-6)
    np.testing.assert_allclose(tape.gradient(ours_weighted, logits), tape.gradient(theirs_weighted, logits), atol=1e-6)
    bf16 = token_cross_entropy(tf.cast(logits, "bfloat16"), targets)  # computed in float32 from bfloat16 logits
    assert bf16.dtype == tf.float32
    np.testing.assert_allclose(bf16, theirs, atol=0.05)


def test_targets_with_a_trailing_axis_give_the_same_loss():
    import tensorflow as tf

    batch, losses = _batches()[0], []
    for targets in (batch[:, 1:], batch[:, 1:, None], np.stack([batch[:, 1:]] * 2, -1)):  # a model each: one
        keras.utils.set_random_seed(0)                                                    # traced step, one shape
        model = GPT2(GPT2Config(**SHAPE))
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if targets.shape[-1] == 2:  # two targets per position: refused, not read as the first
            with pytest.raises(ValueError, match=r"^targets \(y\) of shape \(\d+, \d+, 2\) for ids of shape"):
                model.test_on_batch(batch[:, :-1], targets)
            with pytest.raises(Exception, match="(?i)squeeze"):  # in a tf.data pipeline: by the loss
                model.evaluate(tf.data.Dataset.from_tensors((batch[:, :-1], targets)), verbose=0)
        else:
            losses.append(float(model.test_on_batch(batch[:, :-1], targets)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)


@pytest.mark.parametrize("loss_chunk", [5, 12])  # 12 positions: chunks of 5, 5 and 2; or one chunk
def test_chunked_loss_equals_the_whole_loss_in_value_and_gradient(loss_chunk):
    losses, weights, evaluated = _train(0, loss=keras_cross_entropy)
    chunked_losses, chunked_weights, chunked_evaluated = _train(loss_chunk)
    np.testing.assert_allclose(chunked_losses, losses, rtol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(chunked_weights, weights)) <= 1e-5
    assert abs(chunked_evaluated - evaluated) <= 1e-5 * evaluated  # evaluation takes the whole head


def test_only_the_models_own_train_step_takes_hidden_states_from_call():
    """With loss_chunk, `call` gives logits everywhere (a training loop of one's own, `training=True`, gets them
    too) but inside `train_step`, where the chunked loss reads the final hidden states."""
    model, batch = GPT2(GPT2Config(**SHAPE, loss_chunk=4)), _batches()[0]
    assert tuple(model(batch, training=True).shape) == (3, 13, 61)
    chunked, chunked_loss = [], model._chunked_cross_entropy
    model._chunked_cross_entropy = lambda hidden, targets: chunked.append(tuple(hidden.shape)) or chunked_loss(
        hidden, targets)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(batch[:, :-1], batch[:, 1:])
    assert chunked == [(3, 12, 32)]  # traced once, on the hidden states
    assert tuple(model(batch, training=True).shape) == (3, 13, 61)


def test_chunked_loss_under_mixed_bfloat16_follows_the_whole_loss():
    losses, _, _ = _train(0, "mixed_bfloat16", loss=keras_cross_entropy)
    chunked, _, _ = _train(5, "mixed_bfloat16")
    np.testing.assert_allclose(chunked, losses, rtol=2e-3)  # the same bfloat16 matmuls, summed in another order


def test_chunked_loss_refuses_what_it_cannot_compute():
    model = GPT2(GPT2Config(**SHAPE, loss_chunk=4))
    for kwargs in (dict(loss=keras_cross_entropy),  # a loss of its own
                   dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])):
        with pytest.raises(ValueError, match="loss_chunk computes sparse categorical cross-entropy from logits"):
            model.compile(optimizer="sgd", **kwargs)
    with pytest.raises(ValueError, match="loss_chunk must be 0"):
        GPT2Config(loss_chunk=-1)


def test_the_models_cross_entropy_and_chunked_loss_on_jax_equal_keras():
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import keras
        assert keras.backend.backend() == "jax"
        from test_loss_chunk import _out_of_vocabulary_losses, _train, keras_cross_entropy
        from test_loss_chunk import test_only_the_models_own_train_step_takes_hidden_states_from_call as chunks_here
        chunks_here()  # JAX's train step, too, hands the chunked loss the hidden states
        losses, weights, _ = _train(0, loss=keras_cross_entropy, weighted=True)  # Keras' own, tokens weighted
        (whole, whole_weights, _), (chunked, chunked_weights, _) = _train(0, weighted=True), _train(5, weighted=True)
        gap = lambda a, b: max(float(np.abs(x - y).max()) for x, y in zip(a, b))
        print(json.dumps({{"losses": losses, "chunked": chunked, "whole": whole,
                           "weights": gap(weights, chunked_weights), "whole_weights": gap(weights, whole_weights),
                           "out_of_vocabulary": _out_of_vocabulary_losses()}}))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["chunked"], result["losses"], rtol=1e-5)
    assert result["weights"] <= 1e-5
    np.testing.assert_allclose(result["whole"], result["losses"], rtol=1e-6)
    assert result["whole_weights"] <= 1e-6
    _check_out_of_vocabulary(result["out_of_vocabulary"])
