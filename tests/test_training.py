import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tf_gpt2.cli import main as cli_main
from tf_gpt2.data import MANIFEST, TokenShards, prepare
from tf_gpt2.training import CHECKPOINT, MODEL_FILE, TrainConfig, make_optimizer, prepared_data, train

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 60
TINY = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64)


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "text.txt").write_text(TEXT)
    prepare(str(root / "text.txt"), str(root / "prepared"), vocab="char", val_fraction=0.1, verbose=False)
    return str(root / "prepared")


def config(out, data, **kwargs):
    """A run's settings, compiled without XLA (`tf-gpt2 train`'s default compiles with it): XLA's compile takes longer
    than it saves over these few steps of a tiny model; the tests that pass `jit_compile=True` train under it."""
    defaults = dict(out=str(out), data=data, preset="gpt2-tiny", model=TINY, steps=20, eval_interval=10,
                    batch_size=4, block_size=32, eval_batches=1, warmup_steps=2, sample_tokens=0,
                    tensorboard=False, verbose=0, jit_compile=False)
    return TrainConfig(**{**defaults, **kwargs})


def test_tiny_model_overfits_through_model_fit(char_data, tmp_path, monkeypatch):
    # 30 distinct characters: uniform guessing costs ln(30) = 3.4 nats. The text repeats one
    # 81-character passage, so a model that learned it predicts almost every character: < 0.3.
    from tf_gpt2 import GPT2

    assert json.load(open(os.path.join(char_data, "manifest.json")))["vocab_size"] == 30
    traces, train_step = [], GPT2.train_step
    monkeypatch.setattr(GPT2, "train_step", lambda self, data: traces.append(data) or train_step(self, data))
    model, history = train(config(tmp_path, char_data, steps=300, eval_interval=100, learning_rate=3e-3,
                                  min_learning_rate=3e-4, warmup_steps=20, weight_decay=0.0, jit_compile=True))
    assert len(traces) == 1  # the optimizer is built before fit: built in its first trace, TensorFlow traced twice
    assert history["loss"][0] > history["loss"][-1]
    assert history["loss"][-1] < 0.3
    assert history["val_loss"][-1] < 0.3
    assert np.isclose(history["val_perplexity"][-1], np.exp(history["val_loss"][-1]))
    saved = GPT2.from_pretrained(str(tmp_path / "model.keras"))  # the Python API writes the model as the CLI does
    assert all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), model.get_weights(), strict=True))
    with pytest.raises(ValueError, match="the output .*model.keras is the input .*model.keras"):  # (written over)
        train(config(tmp_path, char_data, steps=400, init_from=str(tmp_path / "model.keras")))


def _checkpoint_step(path):
    with np.load(path) as f:
        return json.loads(str(f["meta"]))["step"]


def test_resume_after_sigkill_is_bit_exact(char_data, tmp_path):
    steps = 60  # the kill lands after step 20, with 40 steps (4 rounds) still to run

    def command(out):
        return [sys.executable, "-m", "tf_gpt2.cli", "train", "--data", char_data, "--out", str(out),
                "--preset", "gpt2-tiny", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--n-positions", "64",
                "--dropout", "0.1", "--steps", str(steps), "--eval-interval", "10", "--batch-size", "4",
                "--block-size", "32", "--eval-batches", "1", "--sample-tokens", "0", "--warmup-steps", "5",
                "--loss-chunk", "12"]  # the head and loss in chunks of 12, 12 and 8 positions (the same loss)

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    straight = subprocess.run(command(tmp_path / "a"), env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]

    kill_mid_run_then_resume(command(tmp_path / "b"), env, after_step=20, steps=steps,
                             uninterrupted=tmp_path / "a" / CHECKPOINT)


def kill_mid_run_then_resume(command, env, after_step, steps, uninterrupted):
    """Start `command` (a `tf-gpt2 train`), SIGKILL it once its checkpoint has passed `after_step`, run it again,
    and check that it resumed there and ended with the checkpoint `uninterrupted`: weights, Adam moments, RNG."""
    checkpoint = os.path.join(command[command.index("--out") + 1], CHECKPOINT)
    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(checkpoint) and _checkpoint_step(checkpoint) >= after_step):
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    killed_at = _checkpoint_step(checkpoint)
    assert after_step <= killed_at < steps

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {checkpoint} at step {killed_at}" in resumed.stdout
    with np.load(uninterrupted) as a, np.load(checkpoint) as b:
        assert _checkpoint_step(uninterrupted) == _checkpoint_step(checkpoint) == steps
        names = [n for n in a.files if n != "meta"]
        assert len(names) > 30 and all(np.array_equal(a[n], b[n]) for n in names)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_gives_finite_loss(char_data, tmp_path, precision):
    model, history = train(config(tmp_path, char_data, precision=precision, steps=10, eval_interval=5,
                                  jit_compile=True))
    assert model.compute_dtype == precision.split("_")[1]
    assert all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]


def test_grad_accumulation_several_steps_per_call_under_xla_trains_as_without(char_data, tmp_path):
    """Five micro-batches a compiled call (two updates and a half: a call's end splits an update) under XLA: the
    updates of one micro-batch a call without XLA (measured 5e-8 apart at most, AMD EPYC, 2026-12-07)."""
    model, history = train(config(tmp_path / "xla", char_data, grad_accum=2, steps_per_execution=5, jit_compile=True))
    plain, _ = train(config(tmp_path / "plain", char_data, grad_accum=2))
    assert all(np.isfinite(history["loss"]))
    assert (int(model.optimizer.iterations), int(model.optimizer._iterations)) == (20, 40)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), plain.get_weights()))
    print(f"XLA, 5 micro-batches a call, vs none: weights {diff:.1e} apart at most")
    assert diff < 1e-5, diff  # (an update a micro-batch, or none: ~1e-3)


def test_weight_decay_only_on_matrices(char_data, tmp_path):
    from tf_gpt2 import GPT2, GPT2Config

    model = GPT2(GPT2Config.from_preset("gpt2-tiny", **TINY, vocab_size=50))
    optimizer = make_optimizer(model, config(tmp_path, char_data))
    optimizer.build(model.trainable_variables)
    decayed = {v.path.split("/", 1)[1] for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert "wte/embeddings" in decayed and "h_0/attn/c_attn/kernel" in decayed
    assert not any(name.endswith(("bias", "gamma", "beta")) for name in decayed)


def test_a_lora_rank_past_the_models_width_is_refused_before_the_text_is_tokenized(tmp_path):
    """enable_lora refused it only after the text was tokenized and the weights copied."""
    from tf_gpt2 import GPT2, GPT2Config

    GPT2(GPT2Config.from_preset("gpt2-tiny", **TINY, vocab_size=30)).save(tmp_path / "base.keras")
    (tmp_path / "text.txt").write_text(TEXT)
    with pytest.raises(ValueError, match=r"^lora_rank 33 \(--lora-rank\) exceeds the model's width of 32 \(n_embd\)"):
        train(config(tmp_path / "run", str(tmp_path / "text.txt"), vocab="char", init_from=str(tmp_path / "base.keras"),
                     lora_rank=33))
    assert not os.path.exists(tmp_path / "run" / "data")


def test_lora_trains_only_adapters(char_data, tmp_path, capsys):
    import keras

    from tf_gpt2 import GPT2, GPT2Config

    base = tmp_path / "base.keras"
    GPT2(GPT2Config.from_preset("gpt2-tiny", **TINY, vocab_size=30)).save(base)
    model, history = train(config(tmp_path / "run", char_data, init_from=str(base), lora_rank=4,
                                  learning_rate=1e-2))
    with pytest.raises(ValueError, match="cannot continue, even with --resume-with-changes: it holds adapters of "
                                         "--lora-rank 4: resume it with --lora-rank 4"):  # (before any text is read)
        train(config(tmp_path / "run", char_data, init_from=str(base), lora_rank=2, learning_rate=1e-2, steps=30,
                     resume_with_changes=True))
    from tf_gpt2.training import enable_lora, restore_checkpoint

    # The checkpoint's own check, where the settings do not tell (a moved base)
    characters = TokenShards(char_data, "train").manifest["chars"]
    other = GPT2(GPT2Config.from_preset("gpt2-tiny", **TINY, vocab_size=30, characters=characters))
    other(np.zeros((1, 4), "int32"))
    enable_lora(other, 2)
    other.compile(optimizer=make_optimizer(other, TrainConfig(lora_rank=2, init_from=str(base))), loss="mse")
    with pytest.raises(ValueError, match="lora_kernel_a' has shape .*: it holds adapters of another --lora-rank, "
                                         "which no resume takes"):  # (was said as "a model of another size")
        restore_checkpoint(other, str(tmp_path / "run" / CHECKPOINT))
    # Another --init-from (a moved base) resumes, said as what it is: the weights go on from the checkpoint.
    shutil.copy(base, tmp_path / "moved.keras")
    capsys.readouterr()
    train(config(tmp_path / "moved", char_data, init_from=str(base), lora_rank=4, learning_rate=1e-2, steps=2,
                 eval_interval=2))
    train(config(tmp_path / "moved", char_data, init_from=str(tmp_path / "moved.keras"), lora_rank=4,
                 learning_rate=1e-2, steps=4, eval_interval=2, resume_with_changes=True))
    assert "a resume goes on from its checkpoint's weights: --init-from gives the model's settings only" \
        in capsys.readouterr().err
    original = GPT2.from_pretrained(str(base))
    trainable = {v.path.split("/")[-1] for v in model.trainable_variables}
    assert trainable == {"lora_kernel_a", "lora_kernel_b"}
    block, before = model.h[0].attn.c_attn, original.h[0].attn.c_attn
    np.testing.assert_array_equal(np.asarray(block._kernel), np.asarray(before.kernel))  # frozen base
    assert not np.allclose(np.asarray(block.kernel), np.asarray(before.kernel))  # merged kernel moved

    # The frozen base in bfloat16 (--base-dtype): half its memory; the adapters and their AdamW moments stay
    # float32, and the losses follow the float32 run's (measured: within 0.3%; a base rounded to 8 bits of
    # mantissa is the whole difference).
    half_config = config(tmp_path / "half", char_data, init_from=str(base), lora_rank=4, learning_rate=1e-2,
                         base_dtype="bfloat16", model={**TINY, "remat": True}, jit_compile=True)
    half, half_history = train(half_config)
    # Its checkpoint restores whole: a rerun reads the bfloat16 base back (np.savez keeps it as raw 2-byte values,
    # which failed with "No cast function available") and finds nothing left to train.
    again, nothing = train(half_config)
    assert nothing == {}
    for before, after in zip(half.variables + half.optimizer.variables, again.variables + again.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(after), np.asarray(before), err_msg=before.path)
    assert half.config.remat  # and recomputed (exact, tests/test_remat.py): LoRA's adapters train through it
    c_attn = half.h[0].attn.c_attn
    assert c_attn._kernel.dtype == "bfloat16" and c_attn.lora_kernel_a.dtype == "float32"
    assert {v.dtype for v in half.optimizer.variables if "lora" in v.path} == {"float32"}
    np.testing.assert_allclose(half_history["loss"], history["loss"], rtol=1e-2)

    # A float16 base (--base-dtype float16, for GPUs without bfloat16 arithmetic such as a T4) gets Keras' dynamic
    # loss scaling, as mixed_float16 does. Its losses fall and follow the float32 run's (measured: within 1e-6
    # relative). At this size an unscaled run follows too; the scale matters at GPT-2's vocabulary and token counts:
    # in one backward pass of a 2-layer, 64-wide model with 50257 tokens and 1,024 tokens a batch (4 x 256), the
    # adapters' gradients through a float16 base were off by up to 14% of their norm unscaled, 0.1% scaled
    # (bfloat16: 0.9%).
    f16, f16_history = train(config(tmp_path / "f16", char_data, init_from=str(base), lora_rank=4,
                                    learning_rate=1e-2, base_dtype="float16", jit_compile=True))
    assert f16.h[0].attn.c_attn._kernel.dtype == "float16" and f16.compute_dtype == "float16"
    assert isinstance(f16.optimizer, keras.optimizers.LossScaleOptimizer)
    assert all(np.isfinite(f16_history["loss"])) and f16_history["loss"][-1] < f16_history["loss"][0]
    np.testing.assert_allclose(f16_history["loss"], history["loss"], rtol=1e-3)


def test_a_character_model_fine_tunes_on_text_of_some_of_its_characters(char_data, tmp_path):
    """Raw text whose characters are all the model's is read in the model's table, so each id keeps its meaning
    (it was refused, saying "only in the data: ''"); shards numbered by the text's own table are refused by name."""
    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.data import TokenShards, codec

    chars = json.load(open(os.path.join(char_data, "manifest.json")))["chars"]
    wider = sorted(chars + ["Q", "Z", "é"])
    GPT2(GPT2Config(**{**TINY, "vocab_size": len(wider), "characters": wider})).save(tmp_path / "wide.keras")
    raw = "Before we proceed any further, hear me speak.\n" * 40
    (tmp_path / "raw.txt").write_text(raw)
    model, _ = train(config(tmp_path / "run", str(tmp_path / "raw.txt"), vocab="char", steps=2, eval_interval=2,
                            init_from=str(tmp_path / "wide.keras")))
    data = TokenShards(str(tmp_path / "run" / "data"), "train")
    assert model.config.characters == wider and data.manifest["chars"] == wider
    assert codec(data.manifest)[1](data.parts[0][:20].tolist()) == raw[:20]  # ids read in the model's table
    with pytest.raises(ValueError, match=r"wide.keras reads all of the data's characters, but .* numbers them by its "
                                         r"own table of 30: give the raw text as --data"):
        train(config(tmp_path / "shards", char_data, init_from=str(tmp_path / "wide.keras")))


def test_init_from_takes_the_runs_model_flags_and_refuses_another_vocabulary(char_data, tmp_path):
    """--init-from keeps the checkpoint's shape but takes the run's dropout and --vocab-multiple (so a split mesh can
    take it); a shape flag it cannot take, a vocabulary other than the data's, are refused by name."""
    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.devices import Mesh, Placement
    from tf_gpt2.training import build_model, matched_to_data, pretrained

    manifest = json.load(open(os.path.join(char_data, "manifest.json")))
    chars = manifest["chars"]

    def source(cfg):
        return matched_to_data(cfg, pretrained(cfg), manifest)

    def start(name, **kwargs):
        GPT2(GPT2Config(**{**TINY, "vocab_size": 30, **kwargs})).save(tmp_path / name)
        return config(tmp_path / "run", char_data, init_from=str(tmp_path / name), model=TINY)

    cfg = start("ids.keras")
    cfg.model = {**TINY, "dropout": 0.2, "vocab_multiple": 4}
    split = Placement(scope=None, replicas=1, mesh=Mesh(1, 4))
    model = build_model(cfg, manifest, split, model_from := source(cfg))
    assert model.config.dropout == 0.2 and model.h[0].attn.resid_dropout.rate == 0.2
    assert model.wte.embeddings.shape[0] == 32 and model.config.characters == chars  # ids-only: now the data's
    x = np.arange(20, dtype="int32")[None]
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(model_from(x)), atol=1e-6)
    cfg.model = TINY
    with pytest.raises(ValueError, match=r"split evenly .*--vocab-multiple"):
        build_model(cfg, manifest, split, source(cfg))

    # Checked before the text is tokenized (a large text takes minutes): the run writes no shards.
    (tmp_path / "raw.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
    with pytest.raises(ValueError, match=r"ids.keras fixes the model's shape and what its weights compute: "
                                         r"--n-layer 3 \(it has 2\), --n-embd 64"):
        train(config(tmp_path / "early", str(tmp_path / "raw.txt"), init_from=str(tmp_path / "ids.keras"),
                      model={**TINY, "n_layer": 3, "n_embd": 64}))
    # and what its weights compute (the Python API's model settings: post-LN ran on pre-LN weights without a word)
    with pytest.raises(ValueError, match=r"fixes .*: norm_position='post' \(it has pre\), activation='relu'"):
        train(config(tmp_path / "early", str(tmp_path / "raw.txt"), init_from=str(tmp_path / "ids.keras"),
                      model={**TINY, "norm_position": "post", "activation": "relu"}))
    assert not os.path.exists(tmp_path / "early" / "data")
    with pytest.raises(ValueError, match=r"other characters than the data \(only in the data: 'e', the first: 'e' in "
                                         r".*text.txt, line 1, only in the model: 'Q'\)"):
        source(start("other.keras", characters=[c if c != "e" else "Q" for c in chars]))
    fewer = [c for c in chars if c != "e"]  # the common case: the text holds the model's characters and new ones
    GPT2(GPT2Config(**{**TINY, "vocab_size": len(fewer), "characters": fewer})).save(tmp_path / "fewer.keras")
    with pytest.raises(ValueError, match=r"other characters than the data \(only in the data: 'e', the first: 'e' in "
                                         r".*text.txt, line 1, only in the model: ''\)"):  # (was: "has 29 tokens, ")
        source(config(tmp_path / "run", char_data, init_from=str(tmp_path / "fewer.keras"), model=TINY))
    with pytest.raises(ValueError, match=r"wide.keras is a model of 64 ids without characters, and the data has 30 "
                                         r"characters: the trained model could not read or write text"):
        source(start("wide.keras", vocab_size=64))  # (its model.keras would have no text tokenizer)
    # Shards already prepared take no --vocab: the fix is other shards, or the raw text; raw text takes --vocab.
    with pytest.raises(ValueError, match=r"bpe.keras reads GPT-2 BPE, the data was tokenized as characters: give the "
                                         r"raw text as --data, or shards prepared with --vocab gpt2"):
        source(cfg := start("bpe.keras", vocab_size=50257))
    cfg.data = str(tmp_path / "raw.txt")
    with pytest.raises(ValueError, match=r"tokenized as characters: pass --vocab gpt2$"):
        source(cfg)
    # A character model (the demo's) is named as one, not as one too narrow for GPT-2 BPE's ids.
    cfg = start("chars.keras", characters=chars)
    with pytest.raises(ValueError, match=r"chars.keras reads characters, the data was tokenized as GPT-2 BPE: give "
                                         r"the raw text as --data, or shards prepared with --vocab char"):
        matched_to_data(cfg, pretrained(cfg), {"vocab_size": 50257})
    cfg.data, cfg.vocab = str(tmp_path / "raw.txt"), "gpt2"
    with pytest.raises(ValueError, match=r"chars.keras reads characters, and the text would be tokenized as GPT-2 "
                                         r"BPE: pass --vocab char$"):
        pretrained(cfg)


def test_a_text_folder_with_another_programs_manifest_is_text(tmp_path):
    """A manifest.json without splits (a dataset card's, a web app's) does not make a folder of texts prepared
    shards, as `tf-gpt2 prepare` reads it too; a damaged one of ours is still read as ours, and named."""
    from tf_gpt2.training import _is_prepared

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(TEXT)
    (tmp_path / "corpus" / "manifest.json").write_text('{"files": ["a.txt"], "license": "CC0"}')
    with pytest.warns(UserWarning, match=r"holds 1 file\(s\) that are not .*, not read: manifest.json"):
        made = prepared_data(config(tmp_path / "run", str(tmp_path / "corpus"), vocab="char"))
    assert made == str(tmp_path / "run" / "data") and json.loads((tmp_path / "run" / "data" / MANIFEST).read_text())[
        "sources"] == [str(tmp_path / "corpus" / "a.txt")]
    (tmp_path / "corpus" / "manifest.json").write_text('{"splits": {"train": [')  # ours, cut short
    assert _is_prepared(str(tmp_path / "corpus"))


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(char_data, tmp_path):
    """...and the run.json that names the settings it was trained under, though the failed run had others."""
    train(config(tmp_path, char_data, steps=10, eval_interval=10))
    good = {name: _digest(tmp_path / name) for name in (CHECKPOINT, "run.json")}
    with pytest.raises(FloatingPointError, match="loss became (nan|inf) \\(batch [2-9] of 10 in round 2\\).*last good "
                                                 "checkpoint is .*Continue from it "
                                                 "with a lower --learning-rate or a --grad-clip below 0.5 and "
                                                 "--resume-with-changes"):  # a clip that changes the run
        train(config(tmp_path, char_data, steps=30, eval_interval=10, learning_rate=1e30, warmup_steps=1,  # (no
                     weight_decay=0.0, grad_clip=0.5, resume_with_changes=True, sample_tokens=4))  # sample from NaN)
    assert {name: _digest(tmp_path / name) for name in good} == good
    # Five micro-batches per compiled call: the NaN came in one of them, whose last loss the call gives
    with pytest.raises(FloatingPointError, match="loss became (nan|inf) \\(batches 1-5 of 10 in round 2\\)"):
        train(config(tmp_path, char_data, steps=30, eval_interval=10, learning_rate=1e30, warmup_steps=1,
                     weight_decay=0.0, grad_clip=0.5, resume_with_changes=True, steps_per_execution=5))


def test_a_round_whose_last_update_went_bad_is_neither_sampled_nor_saved_and_stops_the_run(char_data, tmp_path):
    """Its training loss (the mean of losses before each update) can be finite while the weights after its last
    update are not: its validation loss then is not, or, in a run without validation, its weights. No sample is drawn
    from such weights (it would raise before the NaN guard could say where the run stopped), no checkpoint holds
    them, and the run stops there: at the last round too, where no later loss would show it."""
    import keras

    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.training import SaveCheckpoint, StopOnNaN, TextSample

    model = GPT2(GPT2Config(vocab_size=30, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    model.wpe.embeddings.assign(np.full(model.wpe.embeddings.shape, np.nan, "float32"))
    model.compile(optimizer=keras.optimizers.AdamW())  # a checkpoint holds its state: one saved would be written
    for logs, said in (({"loss": 2.0, "val_loss": float("nan")}, "the validation loss became nan after the round's "
                                                                   "last update"),
                       ({"loss": 2.0}, "the weights stopped being finite in the round's last update")):
        sample, save, guard = TextSample([0], 4, str, round_end=lambda epoch: epoch, verbose=0), SaveCheckpoint(
            str(tmp_path / CHECKPOINT), round_end=lambda epoch: epoch), StopOnNaN()
        for callback in (sample, save, guard):
            callback.set_model(model)
            callback.on_epoch_end(0, dict(logs))
        assert not os.path.exists(tmp_path / CHECKPOINT) and guard.went_bad == said and model.stop_training
    with pytest.raises(FloatingPointError, match="non-finite logits"):  # what the skip above kept from the run
        sample.on_epoch_end(0, {"loss": 2.0, "val_loss": 2.0})
    # The whole run: its first update (at 1e30) breaks the model, and the validation after it is the only loss to
    # see that, in the last round.
    with pytest.raises(FloatingPointError, match="training stopped: the validation loss became nan after the "
                                                 "round's last update; no checkpoint was written"):
        train(config(tmp_path / "run", char_data, steps=1, eval_interval=1, learning_rate=1e30, warmup_steps=1,
                     weight_decay=0.0, grad_clip=0.0))
    assert not os.path.exists(tmp_path / "run" / CHECKPOINT)


def test_bad_training_input_gives_clear_errors_and_keeps_checkpoints(char_data, tmp_path):
    train(config(tmp_path, char_data, steps=10, eval_interval=10))
    good = _digest(tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match=r"block_size 128 exceeds the model's context of 64: use a block_size "
                                         r"\(--block-size\) of at most 64"):
        train(config(tmp_path / "new", char_data, block_size=128))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        config(tmp_path, char_data, batch_size=0)
    with pytest.raises(ValueError, match="unknown preset 'gpt9'"):
        train(config(tmp_path, char_data, preset="gpt9"))
    with pytest.raises(FileNotFoundError, match="no data file matches"):
        train(config(tmp_path / "other", str(tmp_path / "missing.txt")))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="the data is empty"):
        train(config(tmp_path / "other2", str(tmp_path / "empty.txt")))
    with pytest.raises(ValueError, match="precision must be one of"):
        config(tmp_path, char_data, precision="fp8")
    for name in ("out", "data", "init_from", "mesh", "coordinator"):  # "" fell back to the default
        with pytest.raises(ValueError, match=f"^{name} is empty: give a value, or leave it out$"):
            TrainConfig(**{name: ""})
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\), got 4294967296"):
        config(tmp_path, char_data, seed=2**32)
    with pytest.raises(ValueError, match="base_dtype holds a frozen LoRA base: it needs lora_rank"):
        config(tmp_path, char_data, base_dtype="bfloat16")
    with pytest.raises(ValueError, match="precision mixed_float16 would be ignored"):
        config(tmp_path, char_data, lora_rank=4, base_dtype="bfloat16", precision="mixed_float16")
    with pytest.raises(ValueError, match="lora_rank 4 adapts a trained model, whose weights stay frozen"):
        config(tmp_path, char_data, lora_rank=4)  # (adapters on a random base trained without a word)
    assert _digest(tmp_path / CHECKPOINT) == good


def test_corrupt_shard_is_reported(char_data, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(char_data, broken)
    shard = json.load(open(broken / "manifest.json"))["splits"]["train"][0]["file"]
    with open(broken / shard, "r+b") as f:
        f.truncate(11)
    with pytest.raises(ValueError, match=f"{shard} is missing or corrupt"):
        train(config(tmp_path / "run", str(broken)))


def test_gradient_norm_is_logged_before_clipping(char_data, tmp_path):
    """`grad_norm` (progress bar, history, TensorBoard) is the true global norm of the step's gradient, even when
    clipping then scales that gradient down; the run's optimizer clips to --grad-clip (Adam's first step is the
    same whatever the gradient's scale: the weights alone cannot show it)."""
    import keras
    import tensorflow as tf

    from tf_gpt2 import GPT2, GPT2Config

    start = GPT2(GPT2Config(vocab_size=30, **TINY))
    start.save(str(tmp_path / "start.keras"))
    cfg = config(tmp_path / "run", char_data, init_from=str(tmp_path / "start.keras"), steps=1, eval_interval=1,
                 grad_clip=0.01, tensorboard=True, sample_tokens=4)
    model, history = train(cfg)
    clipped = model.optimizer._clip_gradients([tf.constant([30.0, 40.0]), tf.constant([[0.0]])])  # a norm of 50
    assert abs(float(tf.linalg.global_norm(clipped)) - cfg.grad_clip) <= 1e-6
    assert [float(g) for g in tf.reshape(clipped[0], [-1])] == pytest.approx([0.006, 0.008], rel=1e-5)

    x, y = TokenShards(char_data, "train").batch(0, cfg.block_size, cfg.batch_size, seed=cfg.seed)
    reference = keras.models.load_model(str(tmp_path / "start.keras"))
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, reference(x))
    expected = float(tf.linalg.global_norm(tape.gradient(loss, reference.trainable_variables)))
    assert expected > cfg.grad_clip  # so the update was clipped, and the logged norm is the unclipped one
    assert abs(history["grad_norm"][0] - expected) <= 1e-4 * expected

    tags = {}
    for kind in ("train", "validation", "samples"):
        tags[kind] = {value.tag for events in (tmp_path / "run" / "logs" / kind).glob("events.out.tfevents.*")
                      for event in tf.compat.v1.train.summary_iterator(str(events)) for value in event.summary.value}
    # The curves docs/training.md's TensorBoard line names: loss, validation loss and perplexity, learning rate,
    # gradient norm, tokens/s, samples
    assert {"batch_loss", "batch_grad_norm", "epoch_grad_norm", "epoch_learning_rate", "batch_tok/s",
            "epoch_tok/s"} <= tags["train"]
    assert {"epoch_loss", "epoch_perplexity"} <= tags["validation"] and "sample" in tags["samples"]


def _batch_loss_steps(run):
    """The steps of TensorBoard's batch-level loss in all of a run's event files, in the order written."""
    import tensorflow as tf

    steps = []
    for events in sorted((run / "logs" / "train").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            steps += [event.step for value in event.summary.value if value.tag == "batch_loss"]
    return steps


def test_tensorboard_curves_continue_across_fit_calls_and_a_resume(char_data, tmp_path):
    """Batch-level points stand at the micro-batches trained since the run's start: the `fit` calls of one run
    (rounds of other lengths: 3, 3, 1) and a resumed run continue the curve instead of drawing over its start; each
    compiled call is logged, at its last micro-batch."""
    train(config(tmp_path / "run", char_data, steps=7, eval_interval=3, tensorboard=True))
    train(config(tmp_path / "run", char_data, steps=12, eval_interval=3, tensorboard=True, resume_with_changes=True))
    assert _batch_loss_steps(tmp_path / "run") == list(range(1, 13))
    # Two optimizer steps per compiled call: 8 steps are 4 calls, each one logged; resumed with one per call, the
    # curve goes on from step 8 (it went back to 4: calls were counted).
    train(config(tmp_path / "two", char_data, steps=8, eval_interval=4, steps_per_execution=2, tensorboard=True))
    assert _batch_loss_steps(tmp_path / "two") == [2, 4, 6, 8]
    train(config(tmp_path / "two", char_data, steps=10, eval_interval=4, tensorboard=True, resume_with_changes=True))
    assert _batch_loss_steps(tmp_path / "two") == [2, 4, 6, 8, 9, 10]


def test_a_second_train_on_the_same_run_directory_is_refused(char_data, tmp_path):
    """Two processes training into one --out would interleave their checkpoints; the second one is refused."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "tf_gpt2.cli", "train", "--data", char_data, "--out", str(tmp_path),
               "--preset", "gpt2-tiny", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--n-positions", "64",
               "--steps", "100000", "--eval-interval", "10", "--batch-size", "4", "--block-size", "32",
               "--eval-batches", "1", "--sample-tokens", "0", "--no-xla"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (tmp_path / CHECKPOINT).exists():
            time.sleep(0.1)
        assert (tmp_path / CHECKPOINT).exists()
        first.send_signal(signal.SIGSTOP)  # paused, it still holds the run (and leaves the CPU to the second)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert f"is in use by another training run (pid {first.pid})" in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


def test_a_run_is_refused_the_folder_of_a_dataset_or_a_checkpoint(char_data, tmp_path):
    """`train --out` a prepared dataset's or a checkpoint's folder: the run's files went in beside theirs, and
    `generate --model` of the folder read the checkpoint there, not the run's model, without a word."""
    from tf_gpt2 import GPT2, GPT2Config

    shutil.copytree(char_data, tmp_path / "dataset")
    GPT2(GPT2Config(vocab_size=40, **TINY)).save_pretrained(tmp_path / "checkpoint")
    for folder, kind in (("dataset", "a prepared dataset"), ("checkpoint", "a checkpoint or an export")):
        before = sorted(os.listdir(tmp_path / folder))
        with pytest.raises(ValueError, match=f"{tmp_path / folder} is the folder of {kind}: a training run written "
                                             "there would mix its files with those"):
            train(config(tmp_path / folder, char_data))
        assert sorted(os.listdir(tmp_path / folder)) == before


def test_resuming_with_other_settings_or_data_is_refused_unless_asked(char_data, tmp_path, capsys):
    train(config(tmp_path / "run", char_data, steps=10, eval_interval=10))
    good = _digest(tmp_path / "run" / CHECKPOINT)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["backend"] == "tensorflow"  # another backend draws other dropout masks: not this run resumed
    (tmp_path / "run" / "run.json").write_text(json.dumps({**record, "backend": "jax"}))
    with pytest.raises(ValueError, match=r"other settings \(backend: 'jax' -> 'tensorflow' \(KERAS_BACKEND\)\)"):
        train(config(tmp_path / "run", char_data, steps=10, eval_interval=10))
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError,
                       match=r"other settings \(steps: 10 -> 20; learning_rate: 0.0006 -> 0.0003; .*seed: 0 -> 1\)"):
        train(config(tmp_path / "run", char_data, steps=20, eval_interval=10, learning_rate=3e-4, seed=1))
    (tmp_path / "other.txt").write_text(TEXT.upper())
    prepare(str(tmp_path / "other.txt"), str(tmp_path / "other"), vocab="char", verbose=False)
    with pytest.raises(ValueError, match="data: .* -> .*other'; steps: 10 -> 20"):  # (before reading it)
        train(config(tmp_path / "run", str(tmp_path / "other"), steps=20, eval_interval=10))
    assert _digest(tmp_path / "run" / CHECKPOINT) == good
    # Showing progress differently, or naming the shards' own vocabulary, is not another run; more steps with
    # --resume-with-changes continue it.
    train(config(tmp_path / "run", char_data, steps=10, eval_interval=10, verbose=1, eval_batches=2, vocab="char"))
    # Model flags that say what the preset says (gpt2-tiny's 2 layers and heads, dropout 0) make the same model.
    train(config(tmp_path / "run", char_data, steps=10, eval_interval=10, model={"n_embd": 32, "n_positions": 64,
                                                                               "dropout": 0.0}))
    with pytest.raises(ValueError, match=r"other settings \(model: .* -> \{'n_embd': 32, 'n_positions': 64, "
                                         r"'dropout': 0.1\}\)"):
        train(config(tmp_path / "run", char_data, steps=10, eval_interval=10, model={"n_embd": 32, "n_positions": 64,
                                                                                   "dropout": 0.1}))
    with pytest.raises(ValueError, match=r"cannot continue, even with --resume-with-changes: its model is of another "
                                         r"shape \(n_embd 32 -> 48\): resume it with the model's flags it had"):
        train(config(tmp_path / "run", char_data, steps=20, eval_interval=10, model={**TINY, "n_embd": 48},
                     resume_with_changes=True))
    assert _digest(tmp_path / "run" / CHECKPOINT) == good
    capsys.readouterr()
    _, history = train(config(tmp_path / "run", char_data, steps=20, eval_interval=10, resume_with_changes=True))
    assert len(history["loss"]) == 1 and _checkpoint_step(tmp_path / "run" / CHECKPOINT) == 20
    said = capsys.readouterr().err
    assert said.count("note: resuming with changes: steps: 10 -> 20\n") == 1 and said.count("resuming with") == 1
    # Rounds of 6 put step 20 4 steps before a round end: not whole executions of 3 (Keras would run 6).
    with pytest.raises(ValueError, match=r"the checkpoint at step 20 lies 4 step\(s\) before the round end at "
                                         r"step 24 \(--eval-interval 6\): its 4 micro-batches are no whole number "
                                         r"of --steps-per-execution 3; resume with a --steps-per-execution that "
                                         r"divides 4"):
        train(config(tmp_path / "run", char_data, steps=24, eval_interval=6, steps_per_execution=3,
                     resume_with_changes=True))
    # A checkpoint whose run.json is damaged or gone (copied alone) cannot be told apart from another run's.
    good = _digest(tmp_path / "run" / CHECKPOINT)
    for damage, said in ((lambda p: p.write_text("{"), "is unreadable"), (lambda p: p.unlink(), "is missing")):
        damage(tmp_path / "run" / "run.json")
        with pytest.raises(ValueError, match=f"run.json {said}.*: cannot tell which run the checkpoint beside it "
                                             "belongs to. Use another --out for a new run, or --resume-with-changes"):
            train(config(tmp_path / "run", char_data, steps=30, eval_interval=10))
    assert _digest(tmp_path / "run" / CHECKPOINT) == good
    train(config(tmp_path / "run", char_data, steps=30, eval_interval=10, resume_with_changes=True))
    assert _checkpoint_step(tmp_path / "run" / CHECKPOINT) == 30 and os.path.exists(tmp_path / "run" / "run.json")
    # TensorFlow draws other dropout masks under XLA than without it (a tiny run's weights 2.3e-3 apart after 4
    # steps): with dropout, --no-xla is another run; without, it may change as --eval-batches may.
    assert "xla" not in record
    train(config(tmp_path / "drop", char_data, steps=10, eval_interval=10, model={**TINY, "dropout": 0.1}))
    assert json.loads((tmp_path / "drop" / "run.json").read_text())["xla"] is False
    with pytest.raises(ValueError, match=r"other settings \(XLA: False -> True \(--no-xla, or a --strategy that runs "
                                         r"without it: TensorFlow's dropout masks differ\)\)"):
        train(config(tmp_path / "drop", char_data, steps=10, eval_interval=10, model={**TINY, "dropout": 0.1},
                     jit_compile=True))


def test_an_init_from_folder_spelled_otherwise_is_the_same_setting(tmp_path, monkeypatch):
    """A run resumed with `--init-from hf1/` after `hf1` was refused as "other settings (init_from)"; a name on the
    Hub stays a name (./gpt2 is a folder that is not there, not the Hub's gpt2)."""
    from tf_gpt2.training import _same_setting

    (tmp_path / "hf1").mkdir()
    (tmp_path / "hf2").mkdir()
    monkeypatch.chdir(tmp_path)
    for spelling in ("hf1/", "./hf1", str(tmp_path / "hf1")):
        assert _same_setting("init_from", "hf1", spelling, {})
    assert not _same_setting("init_from", "hf1", "hf2", {}) and not _same_setting("init_from", "gpt2", "./gpt2", {})


def test_a_refused_resume_leaves_the_run_as_it_was_and_a_finished_one_says_so(tmp_path, capsys, monkeypatch):
    """Other raw text, or the same file edited, is refused before it is tokenized into the run's data folder; the
    same text spelled as another path, from another folder, is the same run; a run already at --steps says so and
    keeps its run.json, with --resume-with-changes too."""
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.txt").write_text(TEXT.upper())
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    train(config(run, "a.txt", steps=4, eval_interval=4, vocab="char"))  # a path relative to where it started
    kept = {name: _digest(run / name) for name in ("run.json", CHECKPOINT, os.path.join("data", MANIFEST))}
    with pytest.raises(ValueError, match=r"other settings \(data: '.*a.txt' -> '.*b.txt'; the texts of --data \("):
        train(config(run, str(tmp_path / "b.txt"), steps=4, eval_interval=4, vocab="char"))
    (tmp_path / "a.txt").write_text(TEXT.lower())  # edited where it lies
    with pytest.raises(ValueError, match=rf"other settings \(the texts of --data \(edited: {tmp_path / 'a.txt'}\)\)"):
        train(config(run, str(tmp_path / "a.txt"), steps=4, eval_interval=4, vocab="char"))
    with pytest.raises(ValueError, match=r"other settings \(steps: 4 -> 8; the texts of --data \(edited: "):
        train(config(run, str(tmp_path / "a.txt"), steps=8, eval_interval=4, vocab="char"))  # (it named steps only)
    (tmp_path / "a.txt").write_text(TEXT)
    with pytest.raises(ValueError, match=r"other settings \(vocab: 'char' -> 'gpt2'\)\. "):  # the texts are the same
        train(config(run, str(tmp_path / "a.txt"), steps=4, eval_interval=4, vocab="gpt2"))
    # No resume takes another vocabulary: refused before the text is tokenized over the run's data (it was, then
    # refused as "other characters ... against ''"), or float16's loss scale gained (said as another model size)
    for other, problem in (({"vocab": "gpt2"}, "its model reads --vocab char tokens, and this run would tokenize "
                                               "--data with --vocab gpt2: resume it with --vocab char"),
                           ({"vocab": "char", "precision": "mixed_float16"},
                            "it was trained without float16's loss scale")):
        with pytest.raises(ValueError, match=f"cannot continue, even with --resume-with-changes: {problem}"):
            train(config(run, str(tmp_path / "a.txt"), steps=8, eval_interval=4, resume_with_changes=True, **other))
    # nor another LoRA rank, accumulation gained, another size: refused before the edited text is tokenized over the
    # run's data (it was, then refused by the checkpoint; the plain command after said the texts "edited")
    (tmp_path / "a.txt").write_text(TEXT.lower())
    for other, problem in (({"model": {**TINY, "dropout": 0.1}}, "its model was trained with dropout at no layer, "
                                                                  "and this run's would drop at embd_pdrop, "),
                           ({"grad_accum": 2}, "it was trained with --grad-accum 1, and only a run that accumulates "
                                               "keeps accumulators: resume it with --grad-accum 1"),
                           ({"model": {**TINY, "n_layer": 3}}, r"its model is of another shape \(n_layer 2 -> 3\)")):
        with pytest.raises(ValueError, match=f"cannot continue, even with --resume-with-changes: {problem}"):
            train(config(run, str(tmp_path / "a.txt"), steps=8, eval_interval=4, vocab="char",
                         resume_with_changes=True, **other))
    (tmp_path / "a.txt").write_text(TEXT)
    assert {name: _digest(run / name) for name in kept} == kept
    capsys.readouterr()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # "a.txt" from here is another file
    (tmp_path / "elsewhere" / "a.txt").write_text(TEXT.upper())
    with pytest.raises(ValueError, match=f"other settings \\(data: '{tmp_path / 'a.txt'}' -> "
                                         f"'{tmp_path / 'elsewhere' / 'a.txt'}'; the texts of --data \\("):
        train(config(run, "a.txt", steps=4, eval_interval=4, vocab="char"))
    model, history = train(config(run, os.path.join("..", "a.txt"), steps=4, eval_interval=4, vocab="char"))
    assert history == {} and "is at step 4, and --steps is 4: nothing is left to train" in capsys.readouterr().err
    # Changes taken by a finished run would be taken by nothing: refused before its text is tokenized again (they
    # left run.json as it was and the run's data made from the edited text: the plain command was refused after).
    (tmp_path / "a.txt").write_text(TEXT[::-1])  # (the same characters, which a character model reads)
    for steps, said in ((4, "the texts of --data \\(edited: "), (2, "steps: 4 -> 2; the texts of --data")):
        with pytest.raises(ValueError, match=f"is at step 4, and --steps is {steps}: nothing is left to train, so the "
                                             f"changes \\({said}.* would not be taken: give a --steps past 4"):
            train(config(run, str(tmp_path / "a.txt"), steps=steps, eval_interval=4, vocab="char",
                         resume_with_changes=True))
    assert {name: _digest(run / name) for name in kept} == kept
    model, history = train(config(run, str(tmp_path / "a.txt"), steps=6, eval_interval=2, vocab="char",
                                  resume_with_changes=True))  # with steps left, they are taken
    assert int(model.optimizer.iterations) == 6 and _digest(run / "run.json") != kept["run.json"]


def test_no_resume_turns_dropout_on_or_off_and_the_refusal_says_so(char_data, tmp_path):
    """A dropout layer holds random state only at a rate above 0: a resume that turned dropout on was refused as
    "another model size, --lora-rank, float16's loss scale, or --grad-accum", none of which changed."""
    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.training import restore_checkpoint

    with_dropout = {**TINY, "dropout": 0.1}
    train(config(tmp_path, char_data, steps=2, eval_interval=2, model=with_dropout))
    with pytest.raises(ValueError, match=r"cannot continue, even with --resume-with-changes: its model was trained "
                                         r"with dropout at embd_pdrop, resid_pdrop, attn_pdrop, and this run's would "
                                         r"drop at none: a dropout layer keeps random state only at a rate above 0, "
                                         r"so resume it with rates above 0 where they were \(0.1 to 0.2 resumes\)"):
        train(config(tmp_path, char_data, steps=4, eval_interval=2, resume_with_changes=True))
    with pytest.raises(ValueError, match=r"trained with dropout at embd_pdrop, resid_pdrop, attn_pdrop, and this run's "
                                         r"would drop at embd_pdrop, resid_pdrop: "):  # (one kind turned off)
        train(config(tmp_path, char_data, steps=4, eval_interval=2, resume_with_changes=True,
                     model={**with_dropout, "attn_pdrop": 0.0}))
    # The checkpoint's own check, where the settings do not tell (--init-from's rates)
    characters = TokenShards(char_data, "train").manifest["chars"]
    without = GPT2(GPT2Config.from_preset("gpt2-tiny", **TINY, vocab_size=30, characters=characters))
    without(np.zeros((1, 4), "int32"))
    without.compile(optimizer=make_optimizer(without, TrainConfig()), loss="mse")
    with pytest.raises(ValueError, match=r"holds the random state of \d+ dropout layer\(s\), this run's model has 0: "
                                         r"a dropout layer has one only at a rate above 0, so no resume turns a"):
        restore_checkpoint(without, str(tmp_path / CHECKPOINT))
    model, _ = train(config(tmp_path, char_data, steps=4, eval_interval=2, resume_with_changes=True,
                            model={**TINY, "dropout": 0.2}))  # another rate above 0: resumes
    assert int(model.optimizer.iterations) == 4


def test_the_default_sample_prompt_gives_way_in_characters_without_a_line_break(tmp_path, capsys):
    """The default prompt (a line break) cannot be written in such characters: the samples start from nothing. A
    prompt asked for is still refused."""
    (tmp_path / "t.txt").write_text("abc " * 500)
    with pytest.raises(ValueError, match="sample_prompt \\(--sample-prompt\\): character 'x' is not"):
        train(config(tmp_path / "run", str(tmp_path / "t.txt"), vocab="char", steps=2, eval_interval=2,
                     sample_tokens=4, sample_prompt="x"))
    train(config(tmp_path / "run", str(tmp_path / "t.txt"), vocab="char", steps=2, eval_interval=2, sample_tokens=4,
                 verbose=1))
    assert "--- sample at step 2 ---" in capsys.readouterr().out


def test_preparing_the_same_texts_again_is_the_same_dataset_to_a_resumed_run(tmp_path):
    """`prepare` names its shards afresh each time; a run resumes on the texts prepared again, and is refused on
    texts that changed."""
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    prepare(str(text), str(tmp_path / "data"), vocab="char", verbose=False)
    train(config(tmp_path / "run", str(tmp_path / "data"), steps=10, eval_interval=10))
    first = sorted(os.listdir(tmp_path / "data"))
    prepare(str(text), str(tmp_path / "data"), vocab="char", verbose=False)
    assert sorted(os.listdir(tmp_path / "data")) != first  # other shard names, the same texts
    good = _digest(tmp_path / "run" / CHECKPOINT)
    train(config(tmp_path / "run", str(tmp_path / "data"), steps=10, eval_interval=10))  # resumes: nothing left
    assert _checkpoint_step(tmp_path / "run" / CHECKPOINT) == 10
    text.write_text(TEXT.replace("a", "b"))
    prepare(str(text), str(tmp_path / "data"), vocab="char", verbose=False)
    with pytest.raises(ValueError, match=r"other settings \(the dataset \(its manifest differs\)\)"):
        train(config(tmp_path / "run", str(tmp_path / "data"), steps=10, eval_interval=10))
    assert _digest(tmp_path / "run" / CHECKPOINT) == good


def test_the_warmups_first_update_trains(char_data, tmp_path):
    """Update i of a warmup of w runs at (i + 1) / (w + 1) of the peak (nanoGPT's): from 0, as Keras' CosineDecay
    starts, the first update changed nothing and `--steps 2` trained one step."""
    from tf_gpt2.training import learning_rate_schedule

    schedule = learning_rate_schedule(config(tmp_path, char_data, learning_rate=3e-4, steps=10, warmup_steps=2))
    cosine = 3e-4 * (0.1 + 0.9 * (1 + np.cos(np.pi / 8)) / 2)  # update 3: 1/8 of the decay's 8, to a tenth
    assert [float(schedule(i)) for i in range(4)] == pytest.approx([1e-4, 2e-4, 3e-4, cosine], rel=1e-6)
    short = learning_rate_schedule(config(tmp_path, char_data, learning_rate=3e-4, steps=2))  # default warmup: 1
    assert [float(short(i)) for i in range(2)] == pytest.approx([1.5e-4, 3e-4], rel=1e-6)


def test_the_learning_rate_never_rises_when_fine_tuning_with_a_small_rate(char_data, tmp_path):
    from tf_gpt2.training import learning_rate_schedule

    cfg = config(tmp_path, char_data, learning_rate=3e-5, steps=100, warmup_steps=10)  # the README's fine-tune rate
    assert cfg.min_learning_rate == pytest.approx(3e-6)
    rates = [float(learning_rate_schedule(cfg)(step)) for step in range(10, 101)]
    assert rates[0] == pytest.approx(3e-5) and rates[-1] == pytest.approx(3e-6)
    assert all(later <= earlier + 1e-12 for earlier, later in zip(rates, rates[1:]))
    with pytest.raises(ValueError, match="min_learning_rate must be in \\[0, learning_rate"):
        config(tmp_path, char_data, learning_rate=3e-5, min_learning_rate=6e-5)
    numbers = config(tmp_path, char_data, learning_rate=np.float32(3e-4), min_learning_rate=np.float32(3e-5),
                     weight_decay=np.float32(0.1), grad_clip=np.float64(1.0), beta_1=np.float32(0.9),
                     beta_2=np.float64(0.95))  # (refused, or no JSON for run.json)
    assert {type(getattr(numbers, k)) for k in ("learning_rate", "min_learning_rate", "weight_decay", "grad_clip",
                                                "beta_1", "beta_2")} == {float}
    assert (numbers.learning_rate, numbers.weight_decay) == (3e-4, 0.1)  # (a resume with --learning-rate 3e-4 agrees)
    import decimal

    for field, value, said in (("weight_decay", decimal.Decimal("0.1"), "weight_decay must be a number"),
                               ("beta_1", 7.0, r"beta_1 must be in \[0, 1\), got 7.0"),
                               ("beta_2", float("nan"), "beta_2 must be in")):
        with pytest.raises(ValueError, match=said):
            config(tmp_path, char_data, **{field: value})
    for field, value in (("learning_rate", float("nan")), ("grad_clip", -1.0), ("warmup_steps", -5),
                         ("learning_rate", 1e39), ("learning_rate", 1e-40)):  # past float32: inf, or 0
        with pytest.raises(ValueError, match=field):
            config(tmp_path, char_data, **{field: value})
    # `model` sets GPT2Config's fields, but not those the data fixes (a smaller vocabulary trained as a loss of NaN)
    for model, said in (({"vocab_size": 1000}, "model sets vocab_size, which the run takes from its data"),
                        ({"characters": list("ab")}, "model sets characters"),
                        ({"n_layers": 2}, "model sets GPT2Config fields: 'n_layers' is none")):
        with pytest.raises(ValueError, match=said):
            config(tmp_path, char_data, model=model)
    import pathlib  # paths as Paths: kept as the strings run.json records (a Path failed there, after tokenizing)

    paths = config(pathlib.Path(tmp_path), pathlib.Path(char_data), init_from=pathlib.Path(tmp_path) / "m.keras")
    assert (paths.out, paths.data, paths.init_from) == (str(tmp_path), str(char_data), str(tmp_path / "m.keras"))


def test_grad_accum_holds_one_float32_copy_of_the_trained_weights(char_data, tmp_path):
    """The README's "--grad-accum N (N > 1) adds a float32 copy of the trained weights" (under 16-bit compute too)."""
    from tf_gpt2 import GPT2, GPT2Config

    model = GPT2(GPT2Config(vocab_size=40, **TINY), dtype="mixed_bfloat16")
    for accum, copies in ((4, 1), (1, 0)):
        optimizer = make_optimizer(model, config(tmp_path, char_data, grad_accum=accum, precision="mixed_bfloat16"))
        optimizer.build(model.trainable_variables)
        accumulated = getattr(optimizer, "_accumulated_gradients", [])
        assert [(tuple(a.shape), a.dtype) for a in accumulated] == \
            copies * [(tuple(v.shape), "float32") for v in model.trainable_variables]


def test_grad_accum_counts_optimizer_steps(char_data, tmp_path):
    """--steps 6 --grad-accum 3 makes 6 updates of 3 micro-batches each; the schedule moves once per update."""
    import keras

    model, history = train(config(tmp_path, char_data, steps=6, eval_interval=3, grad_accum=3, warmup_steps=2,
                                  learning_rate=1e-3, min_learning_rate=1e-4))
    assert int(model.optimizer.iterations) == 6  # Keras' count of updates
    assert int(model.optimizer._iterations) == 18  # micro-batches seen
    assert _checkpoint_step(tmp_path / CHECKPOINT) == 6
    reference = keras.optimizers.schedules.CosineDecay(0.0, 4, alpha=0.1, warmup_target=1e-3, warmup_steps=2)
    assert history["learning_rate"] == pytest.approx([float(reference(3)), float(reference(6))])
    # Resumed with another --grad-accum, the run goes on from update 6, not from micro-batch 18 read as updates of 2
    # (which ended this run at update 11, its schedule past its end).
    model, history = train(config(tmp_path, char_data, steps=8, eval_interval=3, grad_accum=2, warmup_steps=2,
                                  learning_rate=1e-3, min_learning_rate=1e-4, resume_with_changes=True))
    assert (int(model.optimizer.iterations), int(model.optimizer._iterations)) == (8, 16)
    reference = keras.optimizers.schedules.CosineDecay(0.0, 6, alpha=0.1, warmup_target=1e-3, warmup_steps=2)
    assert history["learning_rate"] == pytest.approx([float(reference(8))])


def test_a_run_with_grad_accum_resumes_bit_exactly(char_data, tmp_path, monkeypatch):
    """Stopped after its first round and run again, a --grad-accum 2 run (dropout on) ends with the uninterrupted
    run's checkpoint: the resumed run reads on from micro-batch 2 * step (from `step` it trained again on batches
    it had seen)."""
    from tf_gpt2.training import SaveCheckpoint

    settings = dict(steps=6, eval_interval=3, grad_accum=2, model={**TINY, "dropout": 0.1})
    train(config(tmp_path / "straight", char_data, **settings))
    save = SaveCheckpoint.on_epoch_end

    def save_then_stop(self, epoch, logs=None):
        save(self, epoch, logs)
        raise RuntimeError("stopped after the first round")

    monkeypatch.setattr(SaveCheckpoint, "on_epoch_end", save_then_stop)
    with pytest.raises(RuntimeError, match="stopped after the first round"):
        train(config(tmp_path / "stopped", char_data, **settings))
    monkeypatch.undo()
    assert _checkpoint_step(tmp_path / "stopped" / CHECKPOINT) == 3
    train(config(tmp_path / "stopped", char_data, **settings))
    with np.load(tmp_path / "straight" / CHECKPOINT) as a, np.load(tmp_path / "stopped" / CHECKPOINT) as b:
        names = [n for n in a.files if n != "meta"]
        assert _checkpoint_step(tmp_path / "stopped" / CHECKPOINT) == 6
        assert len(names) > 30 and all(np.array_equal(a[n], b[n]) for n in names)


def test_a_checkpoint_restores_the_optimizers_own_count_of_micro_batches(tmp_path):
    """Under loss scaling a float16 step skipped for an overflow leaves Keras' count of micro-batches off
    step * grad_accum, and mid-accumulation: a resume keeps the count as saved (recomputed from the step, a resumed
    float16 run ended with other weights than the uninterrupted one); another --grad-accum is refused there."""
    import keras

    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.training import restore_checkpoint, save_checkpoint

    def compiled(grad_accum, dtype="mixed_float16", characters=None):
        model = GPT2(GPT2Config.from_preset("gpt2-tiny", **TINY, vocab_size=30, characters=characters), dtype=dtype)
        model(np.zeros((1, 4), "int32"))
        optimizer = make_optimizer(model, TrainConfig(grad_accum=grad_accum, steps=10))
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(optimizer) if dtype == "mixed_float16"
                      else optimizer, loss="mse")
        model.optimizer.build(model.trainable_variables)
        return model

    saved = compiled(2)
    saved.optimizer.inner_optimizer._iterations.assign(11)  # 5 updates and a micro-batch: a step was skipped
    save_checkpoint(saved, str(tmp_path / CHECKPOINT), step=5)
    restored = compiled(2)
    assert restore_checkpoint(restored, str(tmp_path / CHECKPOINT)) == 5
    assert int(restored.optimizer.inner_optimizer._iterations) == 11
    with pytest.raises(ValueError, match=r"lies within an accumulation \(1 of 2 micro-batches\): it resumes only with "
                                         r"--grad-accum 2"):
        restore_checkpoint(compiled(3), str(tmp_path / CHECKPOINT))
    # bfloat16 weights (np.savez keeps them as raw bytes) restore into float32 ones too, as a float32 LoRA base
    # resumes a --base-dtype bfloat16 run; a checkpoint of other characters is refused (every id would move).
    half = compiled(1, dtype="bfloat16", characters=[chr(97 + i) for i in range(30)])
    save_checkpoint(half, str(tmp_path / CHECKPOINT), step=1)
    whole = compiled(1, dtype="float32", characters=[chr(97 + i) for i in range(30)])
    restore_checkpoint(whole, str(tmp_path / CHECKPOINT))
    np.testing.assert_array_equal(np.asarray(whole.wte.embeddings), np.asarray(half.wte.embeddings, "float32"))
    with pytest.raises(ValueError, match="was trained on other tokens than this run's data holds \\('abcdefghij"):
        restore_checkpoint(compiled(1, dtype="float32", characters=[chr(65 + i) for i in range(30)]),
                           str(tmp_path / CHECKPOINT))


def test_a_checkpoint_is_written_a_variable_at_a_time(tmp_path):
    """A copy of the whole state in host memory at each save (5.9 GB more for GPT-2 medium's weights and AdamW
    moments: a notebook's CPU fine-tune peaked at 21.9 GB) took runs past their memory: the save holds one variable's
    copy at a time, and the file reads back as np.savez wrote it."""
    import keras

    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.training import save_checkpoint

    model = GPT2(GPT2Config(vocab_size=65536, n_positions=16, n_embd=512, n_layer=1, n_head=2))  # 134 MB: wte
    model(np.zeros((1, 4), "int32"))
    model.compile(optimizer=keras.optimizers.AdamW(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    sizes = [np.asarray(v).nbytes for v in model.variables + model.optimizer.variables]

    def mib(field: str) -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # (Linux: the peak starts again from now)
    before = mib("VmRSS:")
    save_checkpoint(model, str(tmp_path / "checkpoint.npz"), step=3)
    rise, largest = mib("VmHWM:") - before, max(sizes) / 2**20
    assert rise < largest + (sum(sizes) / 2**20 - largest) / 2, (rise, largest, sum(sizes) / 2**20)  # not all of it
    with np.load(tmp_path / "checkpoint.npz") as saved:
        assert json.loads(str(saved["meta"]))["step"] == 3
        np.testing.assert_array_equal(saved["v0"], np.asarray(model.variables[0]))


def test_a_warmup_longer_than_the_run_is_shortened_and_said_where_given(char_data, tmp_path, capsys):
    """The warmup ends before the last step (else the run never leaves it): 10 steps of warmup in a run of 3 are 2,
    and `tf-gpt2 train --warmup-steps 10` says so; its default (100) too (it was shortened without a word: a short
    fine-tune rose the whole run and never decayed)."""
    import keras

    _, history = train(config(tmp_path / "api", char_data, steps=3, eval_interval=3, warmup_steps=10,
                              learning_rate=1e-3, min_learning_rate=1e-4))
    reference = keras.optimizers.schedules.CosineDecay(0.0, 1, alpha=0.1, warmup_target=1e-3, warmup_steps=2)
    assert history["learning_rate"] == pytest.approx([float(reference(3))])
    capsys.readouterr()
    for given, said in ((["--warmup-steps", "10"], "1 step, not --warmup-steps 10: "),
                        ([], "1 step, not --warmup-steps 100, its default: "),
                        (["--steps", "101"], "100 steps (--warmup-steps 100, its default): "),  # (its last at the peak)
                        (["--steps", "102"], None)):
        assert cli_main(["train", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "cli"),
                         "--steps", "2", *given]) == 2  # said before the run starts (here: fails)
        err = capsys.readouterr().err
        steps = given[1] if given[:1] == ["--steps"] else "2"
        note = (f"note: the learning rate warms up over {said}the run's last step is at --learning-rate, with no "
                f"cosine decay (--steps {steps})\n")
        assert (note in err) == (said is not None), err
        assert "no data file matches" in err


def test_the_saved_model_holds_the_trained_weights_without_optimizer_state(char_data, tmp_path):
    """`tf-gpt2 train` writes `inference_model(model)`: LoRA merged, no Adam moments; it reloads to the same logits."""
    import keras

    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.files import save_keras
    from tf_gpt2.training import inference_model

    base = tmp_path / "base.keras"
    GPT2(GPT2Config.from_preset("gpt2-tiny", **TINY, vocab_size=30)).save(base)
    ids = np.array([[1, 2, 3, 4, 5]])
    for name, settings in (("full", {}), ("lora", dict(init_from=str(base), lora_rank=4, learning_rate=1e-2))):
        model, _ = train(config(tmp_path / name, char_data, **settings))
        save_keras(inference_model(model), str(tmp_path / f"{name}.keras"))
        reloaded = keras.models.load_model(tmp_path / f"{name}.keras")
        np.testing.assert_allclose(np.asarray(reloaded(ids)), np.asarray(model(ids)), atol=1e-5)
        assert getattr(reloaded, "optimizer", None) is None
    full = os.path.getsize(tmp_path / "full.keras")
    assert os.path.getsize(tmp_path / "lora.keras") == pytest.approx(full, rel=0.05)  # adapters merged away
    model, _ = train(config(tmp_path / "full", char_data))  # already trained: the compiled model, restored
    model.save(tmp_path / "compiled.keras")  # Keras' own save of it holds Adam's moments too
    assert full < 0.5 * os.path.getsize(tmp_path / "compiled.keras")


def test_steps_counts_optimizer_updates_whatever_the_interval(char_data, tmp_path, capsys, monkeypatch):
    """--steps 5 --eval-interval 4 is 5 updates (a round of 4, then one of 1), and --steps 3 with an interval
    of 10 is 3; the checkpoint says so, and a second run of the same settings has nothing left to do. The progress
    is a bar redrawn in a terminal, a line per round in a file (Keras redrew its bar into logs too)."""
    from tf_gpt2.training import restore_checkpoint

    for steps, interval, rounds, terminal in ((5, 4, 2, False), (3, 10, 1, True)):
        out = tmp_path / f"{steps}-{interval}"
        monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)  # (capsys' stream)
        model, history = train(config(out, char_data, steps=steps, eval_interval=interval, verbose=1))
        assert int(model.optimizer.iterations) == steps and len(history["loss"]) == rounds
        printed = capsys.readouterr().out
        said = re.findall(r"Epoch \d+/\d+", printed)  # the run's rounds (it said only "Epoch 2/2")
        assert said == ([f"Epoch {i + 1}/{rounds}" for i in range(rounds)] if rounds > 1 else []), said
        assert ("\r" in printed) == terminal and ("\b" in printed or "\x1b" in printed) == terminal, printed
        if not terminal:  # one line a round: "4/4 - 1s - 96ms/step - loss: 3.4 - val_loss: 3.3 - tok/s: 1335 ..."
            lines = re.findall(r"^\d+/\d+ - \d+s - .* - loss: .* - val_loss: .* - tok/s: ", printed, re.M)
            assert len(lines) == rounds, printed
        assert restore_checkpoint(model, str(out / CHECKPOINT)) == steps
        assert train(config(out, char_data, steps=steps, eval_interval=interval))[1] == {}
    # Resumed from step 5 (between two round ends) to 10: rounds end at 8 and 10, 5 more updates.
    out = tmp_path / "5-4"
    model, history = train(config(out, char_data, steps=10, eval_interval=4, resume_with_changes=True))
    assert int(model.optimizer.iterations) == 10 and len(history["loss"]) == 2
    assert restore_checkpoint(model, str(out / CHECKPOINT)) == 10


def test_texts_read_in_another_order_are_other_data_to_a_resumed_run(tmp_path, capsys):
    """Files are read in the order of their paths, which makes the token stream and the validation split: a text
    renamed past another was taken as the same texts (the digests were compared as sets), tokenized again over the
    run's dataset, and its training text landed in the validation split. It is other text, refused before the
    run's tokens are touched, also beside another change."""
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text(TEXT)
    (tmp_path / "texts" / "b.txt").write_text(TEXT.upper())
    cfg = config(tmp_path / "run", str(tmp_path / "texts"), steps=2, eval_interval=2, vocab="char")
    train(cfg)
    manifest = (tmp_path / "run" / "data" / MANIFEST).read_bytes()
    os.rename(tmp_path / "texts" / "a.txt", tmp_path / "texts" / "c.txt")
    texts = tmp_path / "texts"
    with pytest.raises(ValueError, match=rf"other settings \(the texts of --data \(added: {texts / 'c.txt'}; gone: "
                                         rf"{texts / 'a.txt'}\)\)"):  # (was: "their contents or order changed")
        train(cfg)
    with pytest.raises(ValueError, match=r"steps: 2 -> 4; the texts of --data \(added: "):
        train(dataclasses.replace(cfg, steps=4))
    assert (tmp_path / "run" / "data" / MANIFEST).read_bytes() == manifest
    capsys.readouterr()
    train(dataclasses.replace(cfg, steps=4, resume_with_changes=True))  # said by file (was: "its manifest differs")
    assert (f"note: resuming with changes: steps: 2 -> 4; the texts of --data (added: {texts / 'c.txt'}; gone: "
            f"{texts / 'a.txt'})\n") in capsys.readouterr().err
    made = json.loads((tmp_path / "run" / "data" / MANIFEST).read_text())
    for stamps in ({}, {"source_stamps": [[1, 2, "0"]]}):  # an earlier tf_gpt2's dataset: none kept, or a list (it
        old = {**{k: v for k, v in made.items() if k != "source_stamps"}, **stamps}  # failed: "unhashable type")
        (tmp_path / "run" / "data" / MANIFEST).write_text(json.dumps(old))
        with pytest.raises(ValueError, match=r"\(the texts of --data \(its dataset, made by an earlier tf_gpt2, does "
                                             r"not record its texts\)\)"):
            train(dataclasses.replace(cfg, steps=4))


def test_raw_text_edited_since_it_was_tokenized_is_tokenized_again(tmp_path):
    """A run on raw text keeps its tokens in out/data: lost, they are made again from its text; resuming on changed
    text is refused like any other change of data, before the run's tokens are touched; with --resume-with-changes
    they are made again from the text."""
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT)
    cfg = config(tmp_path / "run", str(text), steps=2, eval_interval=2, vocab="char")
    train(cfg)
    os.utime(text, ns=(0, 0))  # touched (a checkout, a copy): the same text, not tokenized again
    assert train(cfg)[1] == {}
    shard = json.loads((tmp_path / "run" / "data" / MANIFEST).read_text())["splits"]["train"][0]["file"]
    os.remove(tmp_path / "run" / "data" / shard)  # the run's own tokens lost: made again from its text
    assert train(cfg)[1] == {} and (tmp_path / "run" / "data" / MANIFEST).exists()
    text.write_text(TEXT.upper() * 2)
    with pytest.raises(ValueError, match=rf"the texts of --data \(edited: {text}\)"):
        train(cfg)
    chars = lambda: json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())["chars"]  # noqa: E731
    assert "e" in chars()  # the run's tokens, as they were
    table = chars()
    # With --resume-with-changes the text as it is now is read in the run's own characters, so that each id keeps
    # its meaning under the trained weights (in its own table, without "C" and "z", every id after "C" moved).
    with pytest.raises(ValueError, match=r"characters the run's model in .* has no id for: 'D', 'E', 'H', 'I', "
                                         r"'K', 'L', 'M', 'N', 'O', 'P', 'R', 'T', 'U', 'W', 'Y', 'Z' \(the "
                                         r"first: 'I' in .*corpus.txt, line 1\)"):
        prepared_data(dataclasses.replace(cfg, resume_with_changes=True))
    assert chars() == table  # refused before its dataset was touched
    text.write_text(TEXT.replace("Citizen", "Speaker"))
    prepared_data(dataclasses.replace(cfg, resume_with_changes=True))
    assert chars() == table
    shards = TokenShards(str(tmp_path / "run" / "data"), "train")
    assert "".join(table[i] for i in shards.window(0, 20)) == TEXT.replace("Citizen", "Speaker")[:20]


def test_a_rerun_after_a_failed_start_tokenizes_the_text_it_is_given(tmp_path):
    """A start that failed after tokenizing left out/data behind: a rerun with another --data, another --vocab or
    one more file in its folder tokenizes what it is now given, not what the failed start prepared."""
    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "a.txt").write_text(TEXT)
    (tmp_path / "other.txt").write_text(TEXT.upper())
    data = re.escape(str(tmp_path / "run" / "data"))  # (where the text given was tokenized)
    with pytest.raises(ValueError, match=f"the train split of {data} has .* tokens, fewer than block_size \\+ 1 "
                                         "= 8193"):
        train(config(tmp_path / "run", str(tmp_path / "first"), vocab="char", block_size=8192,
                     model={**TINY, "n_positions": 8192}))  # (a bad model flag is refused before tokenizing)

    def manifest():
        return json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())

    assert "e" in manifest()["chars"]
    model, _ = train(config(tmp_path / "run", str(tmp_path / "other.txt"), vocab="char", steps=2, eval_interval=2))
    assert "e" not in manifest()["chars"] and model.config.characters == manifest()["chars"]
    changed = dict(vocab="gpt2", resume_with_changes=True)  # (the run there now has a checkpoint)
    prepared_data(config(tmp_path / "run", str(tmp_path / "first"), **changed))
    assert manifest()["vocab"] == "gpt2" and len(manifest()["source_stamps"]) == 1
    (tmp_path / "first" / "b.txt").write_text("more")
    prepared_data(config(tmp_path / "run", str(tmp_path / "first"), **changed))
    assert len(manifest()["source_stamps"]) == 2


def test_a_damaged_checkpoint_is_named_and_left_as_it_is(char_data, tmp_path):
    cfg = config(tmp_path, char_data, steps=2, eval_interval=2)
    train(cfg)
    path = tmp_path / CHECKPOINT
    whole = path.read_bytes()
    middle = len(whole) // 2
    for damaged in (whole[: len(whole) // 3], b"", whole[:middle] + bytes(64) + whole[middle + 64:]):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match=f"checkpoint {path} is unreadable .*nothing was changed"):
            train(cfg)
        assert path.read_bytes() == damaged


def test_a_validation_split_shorter_than_a_block_is_said(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    (root / "text.txt").write_text(TEXT[:900])
    prepare(str(root / "text.txt"), str(root / "prepared"), vocab="char", val_fraction=0.02, verbose=False)
    _, history = train(config(tmp_path / "run", str(root / "prepared"), steps=2, eval_interval=2))
    assert "val_loss" not in history
    tokens = len(TokenShards(str(root / "prepared"), "val"))
    assert 0 < tokens < 33
    said = capsys.readouterr().err
    assert f"the val split has {tokens} tokens, fewer than block_size + 1 = 33: no validation loss" in said
    # a new model longer than its blocks: positions 32-63 are never trained (eval's default context reads them)
    assert "note: block_size 32 trains positions 0-31 of the model's 64: text past 32 tokens" in said


def test_the_sample_of_a_model_padded_past_its_datas_vocabulary_chooses_none_of_the_padding(capsys, monkeypatch):
    """`--init-from` a checkpoint of 50,304 rows (nanoGPT's) on GPT-2 data: the sample decodes (its padding rows,
    which outscore every token here, are never chosen)."""
    from conftest import padded_gpt2

    from tf_gpt2.tokenizer import GPT2Tokenizer
    from tf_gpt2.training import TextSample

    sample = TextSample([15496], 8, decode=GPT2Tokenizer().decode, round_end=lambda epoch: 1, vocab_end=50257)
    sample.set_model(padded_gpt2())
    sample.on_epoch_end(0)
    assert capsys.readouterr().out.startswith("--- sample at step 1 ---\nHello")  # (a file: no bar's line to end)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal: the bar's line ended first
    sample.on_epoch_end(0)
    assert capsys.readouterr().out.startswith("\n--- sample at step 1 ---\nHello")


@pytest.mark.parametrize("vocab_size, start", [(50257, 50256), (65, 0)])
def test_an_empty_sample_prompt_starts_from_endoftext_which_the_sample_does_not_show(vocab_size, start, capsys):
    """`--sample-prompt ""`: GPT-2's unconditional samples start from `<|endoftext|>` (a character vocabulary has
    none: id 0); the sample shows the new tokens only."""
    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.training import TextSample

    model = GPT2(GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    given, generate = [], model.generate
    model.generate = lambda ids, **kw: given.append(list(ids)) or generate(ids, **kw)
    sample = TextSample([], 5, decode=lambda ids: " ".join(map(str, ids)), round_end=lambda epoch: 1)
    sample.set_model(model)
    sample.on_epoch_end(0)
    shown = capsys.readouterr().out.split("\n")  # its head, its text, its end
    assert given == [[start]] and shown[0] == "--- sample at step 1 ---" and len(shown[1].split()) == 5, shown


@pytest.mark.parametrize("prompt_length, tokens", [(1, 64), (100, 64), (3, 1000)])
def test_the_sample_fits_a_short_context(prompt_length, tokens, capsys):
    """The default sample (64 tokens) after training a 64-position model: as many tokens as the context holds after
    one prompt token, the prompt cut to its last tokens (the sample asked for 64 new ones after the whole prompt);
    each cut is said once (--sample-tokens 1000 was cut to 63 without a word)."""
    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.training import TextSample

    sample = TextSample(list(range(1, prompt_length + 1)), tokens, decode=lambda ids: f"{len(ids)} ids",
                        round_end=lambda epoch: 10)
    sample.set_model(GPT2(GPT2Config(vocab_size=128, n_positions=64, n_embd=16, n_layer=1, n_head=2)))
    sample.on_train_begin()
    sample.on_epoch_end(0)
    sample.on_train_begin()  # a run's next `fit` (a group of rounds of another length)
    shown = capsys.readouterr()
    assert "--- sample at step 10 ---\n64 ids\n" in shown.out
    kept = 64 - min(tokens, 63)  # said once, as training begins, where the prompt is cut
    assert shown.err.count(f"note: the samples are 63 tokens long, not {tokens}: the context of 64") == (tokens > 63)
    assert shown.err.count(f"note: the samples continue the last {kept} of the sample prompt's {prompt_length} "
                           "tokens") == (prompt_length > kept), shown.err


def test_a_context_of_one_position_makes_no_sample_and_says_so(capsys):
    """A 1-position model has no room for a token after the prompt's one: no sample (it failed after the first round
    with "max_new_tokens must be a positive integer, got 0", a flag never given)."""
    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.training import TextSample

    sample = TextSample([1, 2], 64, decode=lambda ids: f"{len(ids)} ids", round_end=lambda epoch: 10)
    sample.set_model(GPT2(GPT2Config(vocab_size=16, n_positions=1, n_embd=16, n_layer=1, n_head=2)))
    sample.on_train_begin()
    sample.on_epoch_end(0)
    shown = capsys.readouterr()
    assert "sample at step" not in shown.out
    assert shown.err.strip() == "note: no samples: the context of 1 holds no token after one prompt token"


def test_the_rounds_left_are_counted_not_listed():
    """The rounds a run has left, grouped by length for Keras' fits: as listing every round end gives them, and at
    once for a --steps of billions (listing them ran out of memory, reported as "lower --batch-size")."""
    import itertools
    import math

    from tf_gpt2.training import round_groups

    def listed(start, steps, interval):
        ends = [min((k + 1) * interval, steps) for k in range(math.ceil(steps / interval))]
        left = [(k, end - max(start, ends[k - 1] if k else 0)) for k, end in enumerate(ends) if end > start]
        return [(length, group[0][0], group[-1][0])
                for length, rounds in itertools.groupby(left, key=lambda r: r[1]) for group in [list(rounds)]]

    for steps, interval in itertools.product(range(1, 25), range(1, 30)):
        for start in range(steps):
            assert round_groups(start, steps, interval) == listed(start, steps, interval), (start, steps, interval)
    assert round_groups(7, 3 * 10**12, 250) == [(243, 0, 0), (250, 1, 12 * 10**9 - 1)]


def test_a_run_json_without_its_checkpoint_starts_over_only_as_the_same_run(char_data, tmp_path):
    """A kill between run.json's rename and the first checkpoint's leaves run.json alone: the same command starts
    over (the same run); other settings are refused as a resume's are, not written over it."""
    cfg = config(tmp_path, char_data, steps=4, eval_interval=2)
    def weights():
        with np.load(tmp_path / CHECKPOINT) as f:
            return [f[name] for name in sorted(f.files) if name != "meta"]

    def killed_before_its_first_checkpoint():  # (the model is written at a run's end)
        for name in (CHECKPOINT, MODEL_FILE):
            os.remove(tmp_path / name)

    train(cfg)
    first = weights()
    killed_before_its_first_checkpoint()
    train(cfg)
    assert all(np.array_equal(a, b) for a, b in zip(weights(), first, strict=True))  # started over: the same run
    killed_before_its_first_checkpoint()
    with pytest.raises(ValueError, match=r"holds the run.json of a run with other settings \(learning_rate: 0.0006 "
                                         r"-> 0.001; min_learning_rate: 6e-05 -> 0.0001\) and no checkpoint.npz"):
        train(config(tmp_path, char_data, steps=4, eval_interval=2, learning_rate=1e-3))
    train(config(tmp_path, char_data, steps=4, eval_interval=2, learning_rate=1e-3, resume_with_changes=True))
    assert json.loads((tmp_path / "run.json").read_text())["settings"]["learning_rate"] == 1e-3


def test_a_bad_model_flag_is_said_before_the_text_is_tokenized(tmp_path):
    """--dropout 1.5, a width heads do not divide, a block longer than the context: said at once, not after minutes
    of tokenizing a large corpus (and no data/ folder left behind)."""
    (tmp_path / "raw.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
    for model, block, said in (({**TINY, "dropout": 1.5}, 32, r"dropout must be in \[0, 1\), got 1.5"),
                               ({**TINY, "n_embd": 30, "n_head": 4}, 32, "n_embd .*30.* divisible by n_head"),
                               (TINY, 65, "block_size 65 exceeds the model's context of 64")):
        with pytest.raises(ValueError, match=said):
            train(config(tmp_path / "run", str(tmp_path / "raw.txt"), model=model, block_size=block, vocab="char"))
        assert not os.path.exists(tmp_path / "run")


def test_the_validation_perplexity_is_exp_of_the_loss_however_large():
    """It was capped at e^50 without a word (a diverging run's loss of 60 showed a perplexity of 5.2e21)."""
    import math
    import types

    import keras

    from tf_gpt2.training import RoundMetrics

    metrics = RoundMetrics()
    metrics.set_model(types.SimpleNamespace(optimizer=keras.optimizers.AdamW(1e-3)))  # (all the callback reads)
    for loss, perplexity in ((2.0, math.exp(2.0)), (60.0, math.exp(60.0)), (800.0, math.inf)):
        logs = {"val_loss": loss}
        metrics.on_epoch_end(0, logs)
        assert logs["val_perplexity"] == perplexity and logs["learning_rate"] == pytest.approx(1e-3)
    logs = {"val_loss": math.nan}
    metrics.on_epoch_end(0, logs)
    assert math.isnan(logs["val_perplexity"])


def test_a_rounds_tokens_per_second_leave_out_its_first_call(monkeypatch):
    """The round's tok/s (its line in a log file, its TensorBoard point) leaves out the first compiled call, whose
    time is XLA's compile and the data's start: round 1 read a fraction of the speed."""
    from tf_gpt2.training import Throughput

    clock = iter([0.0, 10.0, 11.0, 12.0, 20.0, 21.0])  # round 1: a first call of 10 s, then 1 s each; round 2: one
    monkeypatch.setattr("tf_gpt2.training.time.perf_counter", lambda: next(clock))
    throughput, logs = Throughput(tokens_per_step=100), {}
    throughput.on_epoch_begin(0)
    for batch in range(3):
        throughput.on_train_batch_end(batch, logs)
    throughput.on_epoch_end(0, logs)
    assert logs["tok/s"] == 100.0
    throughput.on_epoch_begin(1)
    throughput.on_train_batch_end(0, logs)
    throughput.on_epoch_end(1, logs)
    assert logs["tok/s"] == 100.0  # a round of one call: that call's
