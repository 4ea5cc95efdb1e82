import dataclasses
import os
import warnings

import keras
import numpy as np
import pytest

from tf_gpt2 import GPT2, GPT2Config


@pytest.fixture(scope="module")
def model():
    return GPT2(GPT2Config(vocab_size=97, n_positions=20, n_embd=24, n_layer=2, n_head=3))


def test_logits_shape_and_tied_head(model):
    ids = np.random.RandomState(0).randint(0, 97, (2, 7))
    logits = np.asarray(model(ids))
    assert logits.shape == (2, 7, 97) and logits.dtype == np.float32
    assert len([w for w in model.weights if w.shape == (97, 24)]) == 1  # no separate lm_head matrix
    x = model.wte(ids) + model.wpe(np.arange(7)[None])
    for block in model.h:
        x, _ = block(x)
    hidden = np.asarray(model.ln_f(x))
    np.testing.assert_allclose(logits, hidden @ np.asarray(model.wte.embeddings).T, atol=1e-4)


def test_changing_a_token_never_changes_earlier_logits(model):
    ids = np.random.RandomState(1).randint(0, 97, (1, 20))
    base = np.asarray(model(ids))
    for t in (0, 5, 19):
        changed = ids.copy()
        changed[0, t] = (changed[0, t] + 1) % 97
        out = np.asarray(model(changed))
        np.testing.assert_array_equal(out[0, :t], base[0, :t])
        assert np.abs(out[0, t:] - base[0, t:]).max() > 0


def test_kv_cache_equals_full_forward(model):
    ids = np.random.RandomState(2).randint(0, 97, (2, 20))
    full = np.asarray(model(ids))
    cache = model.init_cache(2, 20)
    steps = []
    logits, cache = model.call_with_cache(ids[:, :8], cache, 0)  # prefill 8, then one at a time
    steps.append(np.asarray(logits))
    for t in range(8, 20):
        logits, cache = model.call_with_cache(ids[:, t:t + 1], cache, t)
        steps.append(np.asarray(logits))
    diff = np.abs(np.concatenate(steps, axis=1) - full).max()
    print(f"KV cache vs full forward: max |diff| {diff:.1e}")  # docs/benchmarks.md quotes it (run with -s)
    assert diff <= 1e-5
    one, one_cache = model.call_with_cache(ids[:, :8], model.init_cache(2, 20), 0, logits_at=5)  # one row of the head
    assert one.shape == (2, 97) and np.abs(np.asarray(one) - full[:, 5]).max() <= 1e-5
    _, all_cache = model.call_with_cache(ids[:, :8], model.init_cache(2, 20), 0)
    for one_layer, all_layer in zip(one_cache, all_cache):
        for name in ("key", "value"):
            assert np.array_equal(np.asarray(one_layer[name]), np.asarray(all_layer[name]))


def test_left_padding_with_mask_and_positions_matches_unpadded(model):
    ids = np.random.RandomState(3).randint(0, 97, (1, 6))
    padded = np.concatenate([np.zeros((1, 3), int), ids], axis=1)
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    out = np.asarray(model(padded, attention_mask=mask, position_ids=positions))
    np.testing.assert_allclose(out[:, 3:], np.asarray(model(ids)), atol=1e-5)


def test_keras_file_round_trip(model, tmp_path):
    ids = np.random.RandomState(4).randint(0, 97, (2, 9))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, GPT2) and loaded.config == model.config
    np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(model(ids)))
    assert isinstance(GPT2.from_pretrained(path), GPT2)


def test_a_compiled_model_reloads_compiled_with_its_optimizer_state(tmp_path):
    """load_model of a fitted GPT2 goes on training as the model it saved would (it came back with no optimizer and
    no loss, while saying it was compiled: GPT2 has its own `compile`)."""
    ids = np.random.RandomState(5).randint(0, 97, (8, 10))
    model = GPT2(GPT2Config(vocab_size=97, n_positions=20, n_embd=24, n_layer=2, n_head=3))
    model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(ids[:, :-1], ids[:, 1:], batch_size=4, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.iterations) == 2
    for m in (model, loaded):
        m.fit(ids[:, :-1], ids[:, 1:], batch_size=4, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not GPT2.from_pretrained(str(tmp_path / "m.keras")).compiled  # read for its weights: no optimizer state

    # Keras saves LoRA adapters merged into the kernels: the optimizer state of the adapters alone would not fit
    # the model that loads (every weight trainable), so such a model is saved uncompiled, with a warning.
    from tf_gpt2.training import enable_lora

    enable_lora(model, 2)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(ids[:, :-1], ids[:, 1:], batch_size=4, verbose=0)
    with pytest.warns(UserWarning, match="a model with LoRA adapters is saved uncompiled, .* the model that loads "
                                         "has no adapters and trains whole; call enable_lora on it again"):
        model.save(tmp_path / "lora.keras")
    loaded = keras.models.load_model(tmp_path / "lora.keras")
    assert not loaded.compiled and all(v.trainable for v in loaded.variables)  # as the warning says


def test_frozen_layers_stay_frozen_through_a_saved_file_with_their_optimizer_state(tmp_path):
    """A sublayer frozen for fine-tuning (the embeddings, a block) was trainable again after `load_model`: the
    optimizer state did not fit (Keras skipped it with a warning) and the next fit moved the frozen weights."""
    model = GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2))
    model.wte.trainable = model.h[0].attn.trainable = False
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = np.random.default_rng(0).integers(0, 50, (4, 9))
    model.fit(ids[:, :-1], ids[:, 1:], verbose=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="(?i).*skipping variable loading")  # Keras' word for a misfit
        model.save(tmp_path / "frozen.keras")
        loaded = keras.models.load_model(tmp_path / "frozen.keras")
    assert loaded._frozen_layers() == model._frozen_layers() == ["wte", "h_0/attn", "h_0/attn/c_proj",
                                                                   "h_0/attn/c_attn"]
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    assert int(loaded.optimizer.iterations) == 1
    embeddings = np.asarray(loaded.wte.embeddings)
    loaded.fit(ids[:, :-1], ids[:, 1:], verbose=0)
    np.testing.assert_array_equal(np.asarray(loaded.wte.embeddings), embeddings)
    assert model.with_dtype("mixed_bfloat16")._frozen_layers() == model._frozen_layers()
    with pytest.raises(ValueError, match=r"frozen names no layer of this model: \['h_9'\]"):
        GPT2.from_config({**model.get_config(), "frozen": ["h_9"]})
    from tf_gpt2.training import enable_lora

    enable_lora(model, 2)  # LoRA freezes the rest itself, and is saved merged: the model that loads trains whole
    assert model._frozen_layers() == []


def test_a_variant_model_is_built_of_variant_blocks_and_round_trips(tmp_path):
    from tf_gpt2.layers import TransformerBlock
    from tf_gpt2.variants import VariantBlock

    cfg = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, norm_position="post",
                     learned_residual_scale=True)
    model = GPT2(cfg)
    assert all(type(b) is VariantBlock for b in model.h)
    assert all(type(b) is TransformerBlock for b in GPT2(dataclasses.replace(cfg, norm_position="pre",
                                                                              learned_residual_scale=False)).h)
    model.h[1].mlp_scale.assign(0.5)
    model.save(tmp_path / "v.keras")
    loaded = keras.models.load_model(tmp_path / "v.keras")
    ids = np.array([[1, 2, 3, 4]])
    assert float(loaded.h[1].mlp_scale) == 0.5 and loaded.config == cfg
    np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(model(ids)))


@pytest.mark.parametrize(
    "ids, error, message",
    [
        (np.array([[1, -1]]), ValueError, "must be in \\[0, 97\\)"),
        (np.array([[1, 97]]), ValueError, "must be in \\[0, 97\\)"),
        (np.zeros((1, 21), int), ValueError, "exceeds the context of 20"),
        (np.zeros((1, 0), int), ValueError, "empty"),
        (np.array([[1.0, 2.0]]), TypeError, "must be integers"),
        (np.array([1, 2]), ValueError, "shape \\[batch, time\\]"),
        ({"token_ids": np.ones((1, 3), int), "attention_mask": np.ones((1, 3), int)}, TypeError,
         r"GPT2 takes the token ids \[batch, time\] as one array \(attention_mask= and position_ids= as keywords\), "
         r"got a dict of \['token_ids', 'attention_mask'\]"),  # keras-hub's inputs: it said "Invalid dtype: object"
        ((np.ones((1, 3), int), np.ones((1, 3), int)), TypeError, "as one array .*, got a tuple of 2 arrays"),
    ],
)
def test_bad_token_ids_give_clear_errors(model, ids, error, message):
    with pytest.raises(error, match=message):
        model(ids)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(position_ids=np.array([[0.9, 1.9, 2.9, 3.9]])), TypeError, "position_ids must be integers, got dtype "
                                                                         "float"),  # it read as 0, 1, 2, 3
        (dict(position_ids=np.array([[False, True, True, True]])), TypeError, "position_ids must be integers"),
        (dict(position_ids=np.array([[0]])), ValueError, r"position_ids must have shape \[batch, time\] = \[1, 4\] as "
                                                          r"token_ids, got shape \[1, 1\]"),  # each token at 0
        (dict(attention_mask=np.array([[0]])), ValueError, r"attention_mask must have shape"),  # every key hidden
        (dict(attention_mask=np.ones((1, 4), "float32")), TypeError, "attention_mask must be integers or bools"),
    ],
)
def test_positions_and_masks_that_would_broadcast_or_truncate_are_refused(model, kwargs, error, message):
    from tf_gpt2.checks import check_aligned

    ids = np.array([[1, 2, 3, 4]])
    with pytest.raises(error, match=message):
        model(ids, **kwargs)
    for name, aligned in kwargs.items():  # beside ids of unknown shape (traced), compared where both are known
        check_aligned(name, keras.KerasTensor((None, None), "int32"), keras.KerasTensor((None, None), "int32"))
        if error is ValueError:
            check_aligned(name, aligned, keras.KerasTensor((None, None), "int32"))
    assert np.asarray(model(ids, attention_mask=np.array([[True] * 4]))).shape == (1, 4, 97)  # bools mask as 0/1
    np.testing.assert_allclose(np.asarray(model(np.repeat(ids, 2, 0), position_ids=np.array([[0, 1, 2, 3]]))),
                               np.repeat(np.asarray(model(ids)), 2, 0), atol=1e-6)  # one row of positions, 2 rows
    np.testing.assert_allclose(np.asarray(model(np.repeat(ids, 2, 0), position_ids=np.arange(4))),
                               np.repeat(np.asarray(model(ids)), 2, 0), atol=1e-6)  # [time], as transformers takes it


@pytest.mark.parametrize("cache_length, cache_index, error, message", [
    (20, 2.7, TypeError, "cache_index must be integers, got dtype float64"),
    (20, True, TypeError, "cache_index must be integers, got dtype bool"),
    (32, 18, ValueError, r"positions must be in \[0, 20\) \(n_positions\), got min 18 and max 21"),
])
def test_a_cache_index_that_would_truncate_or_pass_the_context_is_refused(model, cache_length, cache_index, error,
                                                                            message):
    with pytest.raises(error, match=message):
        model.call_with_cache(np.array([[1, 2, 3, 4]]), model.init_cache(1, cache_length), cache_index)


def test_a_config_of_the_wrong_type_is_refused():
    with pytest.raises(TypeError, match="GPT2Config or a dict"):
        GPT2("gpt2")


def test_build_and_summary_after_construction(model, capsys):
    """The weights exist from __init__ (so checkpoints load at once); an explicit build, as Keras users write
    before summary(), keeps them and changes nothing."""
    before = [v.numpy().copy() for v in model.weights]
    model.build((None, 8))
    model.summary()
    assert "Total params" in capsys.readouterr().out
    assert len(model.weights) == len(before)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.weights))


def test_ids_are_checked_where_they_enter_and_compiled_code_clamps_as_the_readme_says(model):
    """The core is the math: ids are checked at the entry points (an eager call and `generate` here; the training
    data, the served and the on-device signatures in their own tests). A compiled call (TensorFlow, XLA) given an
    id outside the vocabulary reads another row of the table, as the README says: past the end, the last row
    (XLA clamps); a negative id counts from the end (Keras' `take`)."""
    import tensorflow as tf

    vocab = model.config.vocab_size
    for bad in (vocab, -1):
        with pytest.raises(ValueError, match=r"must be in \[0, 97\)"):
            model(np.array([[1, bad]]))
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\)"):
            model.generate([1, bad], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"positions must be in \[0, 20\)"):  # eager: positions too
        model(np.array([[1, 2]]), position_ids=np.array([[0, 20]]))
    with pytest.raises(ValueError, match="2 tokens at cache slot 7 do not fit in a cache of 8"):
        model.call_with_cache(np.array([[1, 2]]), model.init_cache(1, 8), 7)
    compiled = tf.function(lambda ids: model(ids), jit_compile=True)
    np.testing.assert_allclose(compiled(tf.constant([[1, vocab], [-1, 2]])).numpy(),
                               np.asarray(model(np.array([[1, vocab - 1], [vocab - 1, 2]]))), atol=1e-5)


def test_keras_loops_check_ids_given_as_arrays_before_they_trace_the_model():
    """fit / evaluate / predict and their *_on_batch trace the model (compiled here, as on JAX and on a GPU), where an
    id cannot be refused by value and a gather reads another row without a sign: ids given as arrays are checked
    first; a tf.data pipeline runs as Keras runs it."""
    import tensorflow as tf

    model = GPT2(GPT2Config(vocab_size=97, n_positions=20, n_embd=24, n_layer=2, n_head=3))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    targets = np.array([[1, 2, 3, 4]])
    for bad in (np.array([[1, 2, 3, -1]]), np.array([[1, 2, 3, 97]]), tf.constant([[1, 2, 3, 15496]])):
        for loop in (lambda x: model.predict(x, verbose=0), lambda x: model.predict_on_batch(x),
                     lambda x: model.evaluate(x, targets, verbose=0), lambda x: model.test_on_batch(x, targets),
                     lambda x: model.fit(x, targets, verbose=0), lambda x: model.train_on_batch(x, targets)):
            with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\)"):
                loop(bad)
    with pytest.raises(ValueError, match="sequence length 21 exceeds the context of 20"):  # XLA clamps the position
        model.predict(np.zeros((1, 21), int), verbose=0)
    with pytest.raises(TypeError, match="as one array"):
        model.predict({"token_ids": np.ones((1, 3), int)}, verbose=0)
    with pytest.raises(TypeError, match=r"Keras' loops take a list as several inputs, .* give np.array\(ids\)"):
        model.predict([np.arange(4), np.arange(4)], verbose=0)  # rows encoded one by one
    good = np.array([[1, 2, 3, 4]])
    before = [w.numpy() for w in model.weights]
    for by_place in (False, True):  # before an epoch is trained, not after; by keyword or in its place
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\)"):
            validation = (np.array([[1, 2, 3, -1]]), targets)
            model.fit(good, targets, *([1, 1, 0, None, 0.0, validation] if by_place else []),
                      **({} if by_place else {"validation_data": validation, "verbose": 0}))
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.weights))
    assert model.predict(tf.data.Dataset.from_tensors(good), verbose=0).shape == (1, 4, 97)
    assert np.isfinite(model.evaluate(good, targets, verbose=0))


def test_targets_that_cannot_be_the_next_ids_are_said_before_a_step():
    """Hugging Face's habit, `fit(ids, ids)` (its models shift labels inside), trained a model to copy its input
    without a word (warned now); no targets, or targets of another length, failed deep in Keras ("None values not
    supported", a broadcast error). Targets of [batch, time, 1] after [batch, time] failed on a rank Keras left
    unknown when it traced again."""
    import warnings

    model = GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = np.random.RandomState(0).randint(0, 50, (4, 9))
    shifted = r"each position's target is the id after it: fit\(ids\[:, :-1\], ids\[:, 1:\]\)"
    for loop in (model.fit, model.evaluate, model.train_on_batch):
        with pytest.raises(ValueError, match=f"^targets \\(y\\) missing: GPT2 learns the next token, so {shifted}"):
            loop(ids)
        with pytest.raises(ValueError, match=rf"^targets \(y\) of shape \(4, 8\) for ids of shape \(4, 9\): {shifted}"):
            loop(ids, ids[:, 1:])
    with pytest.raises(ValueError, match=r"^validation_data's targets of shape \(4, 3\)"):
        model.fit(ids[:, :-1], ids[:, 1:], validation_data=(ids[:, :-1], ids[:, 1:4]), verbose=0)
    with pytest.warns(UserWarning, match=rf"^targets \(y\) equal the ids given \(x\): GPT2 would learn to copy its "
                                         rf"input, not to predict the next token; {shifted}"):
        model.fit(ids, ids, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.fit(np.full((2, 5), 7), np.full((2, 5), 7), verbose=0)  # (a run of one token: its next is itself)
        for targets in (ids[:, 1:], ids[:, 1:, None], ids[:, 1:]):
            model.fit(ids[:, :-1], targets, verbose=0)


def test_a_compiled_call_reads_the_padding_row_of_an_id_in_the_padding():
    """`vocab_multiple`'s padding rows are rows of the table: a compiled call given an id there reads it (as the
    same weights with a vocabulary of every row do), where an eager call refuses it."""
    import tensorflow as tf

    padded = GPT2(GPT2Config(vocab_size=10, vocab_multiple=16, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    whole = GPT2(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    whole.set_weights(padded.get_weights())
    with pytest.raises(ValueError, match=r"must be in \[0, 10\)"):
        padded(np.array([[1, 12]]))
    compiled = tf.function(lambda ids: padded(ids), jit_compile=True)
    expected = np.asarray(whole(np.array([[1, 12]])))[..., :10]
    np.testing.assert_allclose(compiled(tf.constant([[1, 12]])).numpy(), expected, atol=1e-5)


def test_a_character_model_carries_its_vocabulary_through_save_and_load(tmp_path):
    chars = [chr(ord("a") + i) for i in range(26)]
    model = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=26, n_positions=16, characters=chars))
    model.save(tmp_path / "c.keras")
    assert keras.models.load_model(tmp_path / "c.keras").config.characters == chars
    assert model.with_dtype("mixed_bfloat16").config.characters == chars
    with pytest.raises(ValueError, match=r"characters must be 26 characters \(vocab_size\), got 3"):
        GPT2Config.from_preset("gpt2-tiny", vocab_size=26, characters=["a", "b", "c"])
    # A file written when the model, not its config, held the characters still loads with them.
    old = {**model.get_config(), "config": {**model.config.to_dict(), "characters": None}, "characters": chars}
    assert GPT2.from_config(old).config.characters == chars


def test_the_trained_model_keeps_learned_residual_scales():
    """What `tf-gpt2 train` saves (`inference_model`: the weights copied into a fresh model) keeps a variant block's
    learned residual scales, not fresh ones of 1; LoRA freezes them, and a quantized model's are not copied."""
    from tf_gpt2.training import enable_lora, inference_model

    model = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=50, n_positions=16, learned_residual_scale=True))
    for block in model.h:
        block.attn_scale.assign(1.7)
        block.mlp_scale.assign(0.4)
    ids = np.array([[1, 2, 3, 4]], "int32")
    np.testing.assert_array_equal(np.asarray(inference_model(model)(ids)), np.asarray(model(ids)))
    enable_lora(model, 2)  # adapters only: the scales are frozen with the rest (they trained, in bf16 not at all)
    assert {v.path.split("/")[-1] for v in model.trainable_variables} == {"lora_kernel_a", "lora_kernel_b"}
    model.quantize("int8")  # its weights are int8 codes now: never copied as if they were float (logits off by 500)
    with pytest.raises(ValueError, match=r"the model is quantized \(int8\): its weights are no longer float"):
        inference_model(model)


def test_lora_adapters_are_merged_in_the_dtype_the_weights_are_kept_in(tmp_path):
    """Under mixed_bfloat16 (float32 weights, bfloat16 arithmetic) Keras merges a LoRA update in bfloat16: every
    adapted kernel came out of `save`, `save_weights`, `with_dtype`, `save_pretrained` and `tf-gpt2 train`'s model
    rounded to bfloat16. Merged in float32, it is the base plus the update. What `tf-gpt2 train` saves also holds
    neither `remat` nor `loss_chunk`: a run from it inherited them (no flag turns --remat off), and loss_chunk refused
    metrics."""
    from tf_gpt2.training import TrainConfig, enable_lora, inference_model, model_config

    config = GPT2Config.from_preset("gpt2-tiny", vocab_size=50, n_positions=16, remat=True, loss_chunk=4)
    model = GPT2(config, dtype="mixed_bfloat16")
    enable_lora(model, 2)
    dense = model.h[0].attn.c_attn
    dense.lora_kernel_b.assign(np.random.RandomState(0).randn(*dense.lora_kernel_b.shape) * 1e-3)
    update = np.asarray(dense.lora_kernel_a) @ np.asarray(dense.lora_kernel_b) * (dense.lora_alpha / dense.lora_rank)
    merged = np.asarray(dense._kernel) + update
    saved = inference_model(model)
    assert saved.dtype_policy.name == "mixed_bfloat16" and not saved.config.remat and saved.config.loss_chunk == 0
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")  # (Keras' own: every adapted kernel rounded, its base too)
    model.save_weights(tmp_path / "s.weights.h5", max_shard_size=1e-4)  # shards: a .weights.json, files beside it
    weights, shards = GPT2(config, dtype="mixed_bfloat16"), GPT2(config, dtype="mixed_bfloat16")
    weights.load_weights(tmp_path / "m.weights.h5")
    shards.load_weights(tmp_path / "s.weights.json")
    for copy in (saved, keras.models.load_model(tmp_path / "m.keras"), model.with_dtype("float32"), weights, shards):
        # (rounded to bfloat16: off by up to 6e-5 here)
        np.testing.assert_allclose(np.asarray(copy.h[0].attn.c_attn.kernel), merged, rtol=0, atol=1e-7)
    assert dense.dtype_policy.name == "mixed_bfloat16"  # the model's own layers as they were
    inherited = model_config(TrainConfig(init_from="m.keras", block_size=16, model={"loss_chunk": 8}), None, model)
    assert not inherited.remat and inherited.loss_chunk == 8  # a run's own flags say how its steps are computed


def test_weights_of_a_model_of_other_shapes_are_refused_by_load_weights(tmp_path):
    """A `.weights.h5` of 2 layers loaded whole into a model of 1 (Keras took the first layer, silently), and one of
    another context was refused as "received 0 variables"; both name the shapes now. Dropout and LoRA adapters
    change no shape: those files load, as does `skip_mismatch`."""
    import dataclasses

    from tf_gpt2.training import enable_lora

    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    model = GPT2(config)
    model.save_weights(tmp_path / "m.weights.h5")
    for change, shapes in ((dict(n_layer=1), r"the file has 6 of \[16\], 1 of \[16, 48\], 1 of \[48\] and 4 more "
                                             r"shapes that this model does not\. Build the model from the config"),
                           (dict(n_positions=32), r"the file has 1 of \[16, 16\] that this model does not; this model "
                                                  r"has 1 of \[32, 16\] that the file does not")):
        with pytest.raises(ValueError, match=rf"m.weights.h5 holds the weights of a model of other shapes .*{shapes}"):
            GPT2(dataclasses.replace(config, **change)).load_weights(tmp_path / "m.weights.h5")
    GPT2(dataclasses.replace(config, n_layer=1)).load_weights(tmp_path / "m.weights.h5", skip_mismatch=True)
    ids = np.array([[1, 2, 3]])
    adapted = GPT2(config)
    enable_lora(adapted, 2)
    for other in (GPT2(dataclasses.replace(config, dropout=0.1)), adapted):
        other.load_weights(tmp_path / "m.weights.h5")
        np.testing.assert_allclose(np.asarray(other(ids)), np.asarray(model(ids)), atol=1e-6)
    model.compile(optimizer="adamw", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ids[:, :-1], ids[:, 1:], verbose=0)
    model.save_weights(tmp_path / "trained.weights.h5")  # (with its optimizer's state, as ModelCheckpoint saves)
    fresh = GPT2(config)
    fresh.load_weights(tmp_path / "trained.weights.h5")
    np.testing.assert_allclose(np.asarray(fresh(ids)), np.asarray(model(ids)), atol=1e-6)
    # Keras zeroed both LoRA matrices of a model it loaded into, and with both zero neither learns: fit changed nothing
    adapted.compile(optimizer="adamw", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = np.asarray(adapted(ids))
    adapted.fit(ids[:, :-1], ids[:, 1:], verbose=0)
    assert np.abs(np.asarray(adapted(ids)) - before).max() > 1e-4
    adapted.save_weights(tmp_path / "lora.weights.h5")  # merged, with the adapters' optimizer state
    trained = np.asarray(adapted(ids))
    with pytest.warns(UserWarning, match=r"loading .*lora.weights.h5, Keras set this model's 8 LoRA adapters to zero "
                                         r".* the optimizer's state for them \(this run's, or the file's\) was the "
                                         r"earlier adapters' and does not fit the new ones"):
        adapted.load_weights(tmp_path / "lora.weights.h5")  # (BackupAndRestore's resume of a LoRA run)
    np.testing.assert_allclose(np.asarray(adapted(ids)), trained, atol=1e-6)  # the merged kernels, fresh adapters


def test_a_lora_rank_outside_the_projections_and_a_legacy_h5_save_are_refused(tmp_path):
    """`enable_lora(model, 0)` froze every weight and trained nothing; -1 and 2.5 failed on a shape naming no rank.
    `model.save("x.h5")` wrote Keras' legacy format, which `load_model` then could not read (Unknown layer GPT2)."""
    from tf_gpt2.training import enable_lora

    model = GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    for rank in (0, -1, 2.5, True, 17):
        with pytest.raises(ValueError, match=r"the LoRA rank must be an integer in \[1, 16\] \(n_embd"):
            enable_lora(model, rank)
    assert all(v.trainable for v in model.variables)  # refused before anything was frozen
    enable_lora(model, 16)
    for name in ("m.h5", "m.HDF5"):
        with pytest.raises(ValueError, match=f"{name}: GPT2 saves as a .keras file"):
            model.save(tmp_path / name)
    assert os.listdir(tmp_path) == []
