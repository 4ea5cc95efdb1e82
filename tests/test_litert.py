"""The on-device model: one .tflite in the LiteRT-LM contract, run by LiteRT-LM itself and by the plain
LiteRT interpreter, compared with the Keras model's greedy tokens."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import lora_model, spread_tiny_model

from tf_gpt2 import GPT2, GPT2Config, GPT2Tokenizer
from tf_gpt2.cli import main as cli_main
from tf_gpt2.litert import LiteRTGenerator, export_litert, export_litertlm, litert_bytes, token_budget
from tf_gpt2.tokenizer import EOT_ID, VOCAB_SIZE

pytest.importorskip("ai_edge_litert")
litert_lm = pytest.importorskip("litert_lm")

CACHE, PREFILL = 40, (4, 8)  # small, so that prompts span several prefill chunks
PROMPT = "The quick brown fox jumps over the lazy dog, and then"  # 12 tokens: chunks of 8 and 4 (with the start token)


@pytest.fixture(scope="module")
def model():
    return spread_tiny_model()


@pytest.fixture(scope="module")
def flatbuffer(model):
    """The model's .tflite at CACHE and PREFILL, converted once: each test builds its own LiteRTGenerator of it."""
    return litert_bytes(model, CACHE, PREFILL)


@pytest.fixture(scope="module")
def litertlm_file(model, tmp_path_factory):
    return export_litertlm(model, str(tmp_path_factory.mktemp("lm") / "tiny.litertlm"), CACHE, PREFILL)


def _litert_lm_turns(path, turns, max_output_tokens):
    """Texts LiteRT-LM generates for each turn of one session (greedy: its default sampler)."""
    with litert_lm.Engine(path) as engine:
        with engine.create_session(apply_prompt_template=False, max_output_tokens=max_output_tokens) as session:
            answers = []
            for turn in turns:
                session.run_prefill([turn])
                answers.append(session.run_decode().texts[0])
            return answers


def test_litert_lm_runs_the_package_and_matches_keras_over_two_turns(model, litertlm_file):
    tok = GPT2Tokenizer()
    second = " So the fox"
    with litert_lm.Engine(litertlm_file) as engine:
        assert engine.bos_token_id == EOT_ID and engine.eos_token_ids == [[EOT_ID]]
        assert engine.tokenize(PROMPT) == tok.encode(PROMPT)  # the packed tokenizer.json is GPT-2's
    first_ids = [EOT_ID] + tok.encode(PROMPT)  # the runtime starts a conversation with the start token
    assert len(first_ids) > max(PREFILL)
    first_new = model.generate(first_ids, max_new_tokens=6, stop_ids=[])
    second_new = model.generate(first_ids + first_new + tok.encode(second), max_new_tokens=6, stop_ids=[])
    answers = _litert_lm_turns(litertlm_file, [PROMPT, second], max_output_tokens=6)
    assert answers == [tok.decode(first_new), tok.decode(second_new)]


def test_a_conversation_past_the_cache_fails_as_troubleshooting_says(litertlm_file):
    """The rows of docs/troubleshooting.md: a session holds `cache_length - (max(prefill) - 1)` tokens (33 here); a
    prompt past that fails its prefill, and a turn that outgrows what is left answers nothing."""
    long = "one two three four five six seven eight nine ten " * 4
    assert len(GPT2Tokenizer().encode(long)) == 41  # with the start token, 42 > 33
    with pytest.raises(RuntimeError, match="litert_lm_session_run_prefill failed"):
        _litert_lm_turns(litertlm_file, [long], max_output_tokens=4)
    first, second = _litert_lm_turns(litertlm_file, ["hello " * 10] * 2, max_output_tokens=30)
    # 11 tokens with the start token leave 22 of the 33 for the first answer, not the 30 asked: cut short, then nothing
    assert 0 < len(GPT2Tokenizer().encode(first)) <= 22 and second == ""


def test_litert_lm_stops_at_end_of_text(tmp_path):
    """A model that says <|endoftext|> at position 6 and goes on after it when not stopped."""
    keras.utils.set_random_seed(1)
    model = GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=64, initializer_range=0.3))
    for block in model.h:  # blocks add nothing: the logits at p are ln_f(wte[token] + wpe[p]) . wte
        for projection in (block.attn.c_proj, block.mlp.c_proj):
            for weight in projection.weights:
                weight.assign(np.zeros(weight.shape, np.float32))
    direction = np.random.RandomState(0).randn(64).astype(np.float32)
    wte, wpe = model.wte.embeddings.numpy(), model.wpe.embeddings.numpy()
    wte[EOT_ID] = 0.5 * direction
    wpe[6] += 100 * direction  # at position 6 the residual stream points at <|endoftext|>'s embedding,
    wpe[7] -= 100 * direction  # at 7 away from it
    model.wte.embeddings.assign(wte)
    model.wpe.embeddings.assign(wpe)
    tok = GPT2Tokenizer()
    prompt = "Once upon"
    ids = [EOT_ID] + tok.encode(prompt)
    unstopped = model.generate(ids, max_new_tokens=10, stop_ids=[])
    stop_at = unstopped.index(EOT_ID)
    assert 0 < stop_at < 9 and any(t != EOT_ID for t in unstopped[stop_at + 1:])
    path = export_litertlm(model, str(tmp_path / "stops.litertlm"), CACHE, PREFILL)
    assert _litert_lm_turns(path, [prompt], max_output_tokens=10) == [tok.decode(unstopped[:stop_at])]


def test_a_model_wider_than_gpt2s_vocabulary_writes_gpt2s_ids_on_device(tmp_path):
    """A converted nanoGPT checkpoint's 50,304 ids (refused before): the .litertlm's `decode` gives GPT-2's 50,257
    logits, so the runtime writes what `generate` writes from text; here every step would choose an id past GPT-2's
    (the rows after it point where the stream does), which the tokenizer could not write."""
    keras.utils.set_random_seed(2)
    model = GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=64, vocab_size=50304))
    wte = model.wte.embeddings.numpy()
    direction = np.random.RandomState(0).randn(wte.shape[1]).astype(np.float32)
    wte[VOCAB_SIZE:] = 0.3 * direction
    model.wte.embeddings.assign(wte)
    model.wpe.embeddings.assign(model.wpe.embeddings.numpy() + 3 * direction)
    ids = [EOT_ID] + GPT2Tokenizer().encode(PROMPT)
    assert min(model.generate(ids, max_new_tokens=4, stop_ids=[])) >= VOCAB_SIZE  # unrestricted: past GPT-2's
    expected = model.generate(ids, max_new_tokens=6, stop_ids=[EOT_ID], vocab_end=VOCAB_SIZE)
    path = export_litertlm(model, str(tmp_path / "wide.litertlm"), CACHE, PREFILL)
    assert _litert_lm_turns(path, [PROMPT], max_output_tokens=6) == [GPT2Tokenizer().decode(expected)]


def test_plain_interpreter_runs_the_same_contract(model, flatbuffer):
    gen = LiteRTGenerator(flatbuffer)
    assert gen.prefill_lengths == list(PREFILL) and gen.cache_length == CACHE
    assert sorted(gen.interpreter.get_signature_list()) == ["decode", "prefill_4", "prefill_8"]
    prompt = np.random.RandomState(3).randint(0, 50257, 15).tolist()  # chunks 8 + 4, one decode step, then 2 steps
    full = np.asarray(model(np.array([prompt])))[0]
    np.testing.assert_allclose(gen.feed(prompt[:13]), full[12], atol=1e-4)
    np.testing.assert_allclose(gen.feed(prompt[13:]), full[14], atol=1e-4)
    assert gen.position == 15
    ids = gen.generate(prompt, max_new_tokens=12)
    assert ids == model.generate(prompt, max_new_tokens=12, stop_ids=[])
    assert gen.position == 15 + 11  # generate's last token is not in the cache: fed with what follows, as documented
    whole = prompt + ids + [318]
    np.testing.assert_allclose(gen.feed(ids[-1:] + [318]), np.asarray(model(np.array([whole])))[0, -1], atol=1e-4)


def test_a_lora_model_with_a_bfloat16_base_runs_on_device_with_its_adapters_merged():
    """`tf-gpt2 train --lora-rank --base-dtype bfloat16` gives such a model; the on-device file is float32 (its
    conversion failed in `with_dtype`). `export_litertlm` packs these same bytes."""
    model = lora_model("bfloat16")
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    generator = LiteRTGenerator(litert_bytes(model, 16, (4,)))
    np.testing.assert_allclose(generator.feed(prompt), np.asarray(model(np.array([prompt])))[0, -1],
                               atol=0.15)  # the model's own logits in bfloat16: measured 0.045


def test_generator_rejects_bad_input_and_keeps_its_cache(flatbuffer):
    gen = LiteRTGenerator(flatbuffer)
    logits = gen.feed([464, 3290, 318])
    cache = {name: value.copy() for name, value in gen.cache.items()}
    for bad, message in (([], "no tokens to feed"), ([5, 50257], r"token ids must be in \[0, 50257\)"),
                         ([-1], r"token ids must be in"), ([1] * 38, "exceed the exported cache of 40")):
        with pytest.raises(ValueError, match=message):
            gen.feed(bad)
    for bad in ([464.9], [True]):  # not rounded to 464 nor read as 1
        with pytest.raises(TypeError, match="token ids must be integers"):
            gen.feed(bad)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 50257\)"):
        gen.generate([5, 50257], max_new_tokens=2)  # refused before the conversation is reset
    with pytest.raises(ValueError, match=r"stop_ids must be token ids in \[0, 50257\)"):  # one it never writes
        gen.generate([5], max_new_tokens=2, stop_ids=[10**6])
    for bad in (True, "50256"):  # (a bool is no id, and a string's characters are none)
        with pytest.raises(TypeError, match="stop_ids must be a token id or a list of them"):
            gen.generate([5], max_new_tokens=2, stop_ids=bad)
    for no_id in ([None], None):  # (CharacterTokenizer's eot_id)
        with pytest.raises(ValueError, match="None is no stop id: a character model has no end-of-text token"):
            gen.generate([5], max_new_tokens=2, stop_ids=no_id)
    # a batch ("token ids must be integers, got [[1, 2], ...]"; a ragged one: numpy's "inhomogeneous shape")
    for batch in ([[1, 2], [3, 4]], np.array([[1, 2], [3, 4]]), [[1, 2], [3]], [[1], 2]):
        with pytest.raises(ValueError, match="runs one sequence .*: give one list of ids, not a batch of 2 rows"):
            gen.generate(batch, max_new_tokens=2)
    assert gen.position == 3 and all(np.array_equal(gen.cache[n], cache[n]) for n in cache)
    np.testing.assert_array_equal(gen.feed([11]), LiteRTGenerator(flatbuffer).feed(
        [464, 3290, 318, 11]))  # the failed calls changed nothing
    assert logits.shape == (50257,)
    with pytest.raises(ValueError, match=r"the prompt's 3 tokens \+ max_new_tokens 39 - 1 exceed the exported cache "
                                         "of 40 positions: at most 38 new tokens after this prompt"):
        gen.generate([1, 2, 3], max_new_tokens=39)
    assert len(gen.generate([1, 2, 3], max_new_tokens=38, stop_ids=[])) == 38  # (the last one is never cached)
    for count in (0, True):  # (True is no count: it gave one token)
        with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
            gen.generate([1, 2, 3], max_new_tokens=count)
    one_id = gen.generate([464, 3290], max_new_tokens=3, stop_ids=[])[0]  # one stop id, as model.generate takes it
    assert gen.generate([464, 3290], max_new_tokens=3, stop_ids=one_id) == [one_id]


def test_the_raw_signatures_never_corrupt_the_cache(flatbuffer):
    """An app driving the .tflite itself gets no Python checks: the signatures check in the graph; a step at a
    position outside the cache or with an id outside the vocabulary returns NaN logits and leaves every cache slot
    as it was (a clamped write would overwrite the conversation's first or last entries)."""
    gen = LiteRTGenerator(flatbuffer)
    gen.feed([464, 3290, 318])
    decode, prefill = gen.interpreter.get_signature_runner("decode"), gen._prefill[min(PREFILL)]
    t = min(PREFILL)
    steps = [(decode, [[11]], [CACHE]), (decode, [[11]], [-1]), (decode, [[-5]], [3]), (decode, [[50257]], [3]),
             (prefill, [[11] * t], list(range(CACHE - t + 1, CACHE + 1))), (prefill, [[11] * t], [-1] * t),
             (prefill, [[11] * (t - 1) + [50257]], list(range(3, 3 + t)))]
    for runner, tokens, positions in steps:
        time = len(positions)
        mask = np.zeros((1, 1, time, CACHE), np.float32)
        out = runner(tokens=np.array(tokens, np.int32), input_pos=np.array(positions, np.int32), mask=mask, **gen.cache)
        assert all(np.array_equal(out[name], gen.cache[name]) for name in gen.cache), (tokens, positions)
        if "logits" in out:
            assert np.isnan(out["logits"]).all()
    out = decode(tokens=np.array([[11]], np.int32), input_pos=np.array([3], np.int32),
                 mask=np.zeros((1, 1, 1, CACHE), np.float32), **gen.cache)
    assert np.isfinite(out["logits"]).all()  # and a good step after them runs as ever
    assert not np.array_equal(out["kv_cache_k_0"], gen.cache["kv_cache_k_0"])


def test_quantized_variants_agree_with_fp32_on_a_trained_model(trained, held_out):
    """Teacher-forced on held-out Shakespeare: the share of positions whose greedy choice equals Keras fp32's."""
    text = held_out[:47]
    reference = np.argmax(np.asarray(trained(np.array([text])))[0], axis=-1)
    assert len(set(reference.tolist())) >= 6  # varied choices, not one repeated token
    sizes = {}
    logits = np.asarray(trained(np.array([text])))[0]
    # Bounds on mean |logits - Keras fp32| over the logits' spread, measured: fp32 ~1e-7, fp16 0.0004, int8 0.009;
    # a float model with 1% (2%) noise on every weight gives 0.013 (0.026) and agrees on 98-100% of the choices.
    for quantize, min_agreement, bound in (("fp32", 1.0, 1e-5), ("fp16", 0.95, 0.002), ("int8", 0.85, 0.02)):
        tflite = litert_bytes(trained, 48, (8,), quantize)
        sizes[quantize] = len(tflite)
        gen = LiteRTGenerator(tflite)
        steps = np.stack([gen.feed(text[:1])] + [gen.feed([t]) for t in text[1:]])
        agreement = np.mean(steps.argmax(-1) == reference)
        error = np.abs(steps - logits).mean() / logits.std()
        print(f"{quantize}: {agreement:.0%} of greedy choices equal Keras fp32's, relative logit error {error:.2g}")
        assert agreement >= min_agreement and error <= bound, (quantize, agreement, error)
    # int8 stores the tied embedding twice (per-tensor for the lookup, per-channel for the LM head).
    assert sizes["fp16"] < 0.55 * sizes["fp32"] and sizes["int8"] < 0.6 * sizes["fp32"]


def test_bad_export_arguments_fail_clearly_and_write_nothing(model, tmp_path, capsys):
    out = tmp_path / "m.litertlm"
    for kwargs, message in ((dict(quantize="int4"), "unknown quantization 'int4'"),
                            (dict(cache_length=65), r"cache_length must be an integer in \[1, 64\]"),
                            (dict(cache_length=16, prefill_lengths=(8, 32)),
                             "prefill length 32 exceeds cache_length 16"),
                            (dict(prefill_lengths=(0,)), "prefill_lengths must be positive integers"),
                            (dict(prefill_lengths=8), "prefill_lengths must be a list of positive integers, got 8"),
                            (dict(prefill_lengths=[8, [4]]), "prefill_lengths must be positive integers"),
                            (dict(prefill_lengths=(8, 8)), r"prefill_lengths gives a length more than once: \[8, 8\]"),
                            # Files that LiteRT-LM could not run a prompt with (tried: litert-lm 0.18.1).
                            (dict(cache_length=16, prefill_lengths=(8, 13)),
                             "prefill length 13 is a prime above 10, which LiteRT-LM takes for a placeholder"),
                            (dict(cache_length=37, prefill_lengths=(8,)),
                             "cache_length 37 is a prime above 10, which LiteRT-LM takes for a placeholder"),
                            (dict(cache_length=16, prefill_lengths=(15,)),  # (17 is a placeholder: 18)
                             r"leaves LiteRT-LM 2 token\(s\) .*; use a cache_length of 18 or more, or prefill "
                             "lengths of at most 14$"),
                            (dict(cache_length=2), r"cache_length 2 with prefill length 1 leaves LiteRT-LM 2 .* use a "
                                                   "cache_length of 3 or more$"),  # (its prefill length is 1 already)
                            (dict(cache_length=64, prefill_lengths=(63,)),  # (a cache past the model's 64: refused)
                             r"leaves LiteRT-LM 2 token\(s\) .*; use prefill lengths of at most 62$"),
                            (dict(cache_length=21, prefill_lengths=(20,)),  # (19 is a placeholder)
                             r"use a cache_length of 22 or more, or prefill lengths of at most 18$")):
        with pytest.raises(ValueError, match=message):
            export_litertlm(model, str(out), **kwargs)
    for config, kind in ((dict(vocab_size=65), "fewer ids than GPT-2's"),
                         (dict(vocab_size=3, characters=["a", "b", "c"]), "a character model's")):
        with pytest.raises(ValueError, match=f"but this model has {config['vocab_size']} \\({kind}\\), which that "
                                             "tokenizer cannot read or write: export a plain .tflite"):
            export_litertlm(GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=32, **config)), str(out))
    # The Python exports refuse what the CLI refuses: a suffix of the other format (LiteRT-LM then failed on the
    # file's "magic number"), and a file of another kind at the path (replaced)
    for export, name, message in (
            (export_litert, "m.litertlm", "names a .litertlm file, but this export writes a .tflite"),
            (export_litertlm, "m.TFLITE", "names a .tflite file, but this export writes a .litertlm"),
            (export_litert, "notes.tflite", "is a file but no .tflite file: writing there would"),
            (export_litertlm, "notes.litertlm", "is a file but no .litertlm file: writing")):
        if name.startswith("notes"):
            (tmp_path / name).write_text("my notes")
        with pytest.raises(ValueError, match=message):
            export(model, str(tmp_path / name), CACHE, PREFILL)
    assert sorted(os.listdir(tmp_path)) == ["notes.litertlm", "notes.tflite"]
    assert {(tmp_path / n).read_text() for n in os.listdir(tmp_path)} == {"my notes"}
    for name in os.listdir(tmp_path):
        os.remove(tmp_path / name)
    # LiteRT-LM opens a package by its name's lower-case ending ("Unsupported or unknown file format" otherwise)
    for name in ("gpt2-tiny", "up.LITERTLM"):
        with pytest.raises(ValueError, match=f"{name}: LiteRT-LM opens a package by its name's ending, .litertlm"):
            export_litertlm(model, str(tmp_path / name), CACHE, PREFILL)
    assert cli_main(["export", "--random-init", "gpt2-tiny", "--out", str(tmp_path / "up.LITERTLM")]) == 2
    assert "LiteRT-LM opens a package by its name's ending" in capsys.readouterr().err
    # A failed export leaves no folders made for it (the CLI made them before the model loaded); a quantized Keras
    # model is refused naming the flag too
    missing, new = str(tmp_path / "missing.keras"), str(tmp_path / "new" / "m.tflite")
    assert cli_main(["export", "--model", missing, "--out", new]) == 2
    assert "missing.keras" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tf_gpt2.litert.litert_bytes", lambda *a, **k: exec("raise MemoryError('converting')"))
        with pytest.raises(MemoryError, match="converting"):
            export_litertlm(model, tmp_path / "new" / "sub" / "m.litertlm", CACHE, PREFILL)  # (a Path too)
    quantized = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=50, n_positions=16))
    quantized.quantize("int8")
    with pytest.raises(ValueError, match=r"export the float model with quantize='int8' \(--quantize int8\)"):
        export_litert(quantized, str(tmp_path / "new" / "sub" / "q.tflite"))
    assert os.listdir(tmp_path) == []
    (tmp_path / "folder.tflite").mkdir()  # refused before the conversion, not after it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tf_gpt2.litert.litert_bytes", lambda *a, **k: pytest.fail("converted before refusing"))
        with pytest.raises(IsADirectoryError, match="folder.tflite is a folder: name the .tflite file to write"):
            export_litert(model, str(tmp_path / "folder.tflite"), CACHE, PREFILL)
        with pytest.raises(ValueError, match="m.keras names a .keras file, but this export writes a .tflite"):
            export_litert(model, str(tmp_path / "m.keras"), CACHE, PREFILL)
    os.rmdir(tmp_path / "folder.tflite")
    assert token_budget(model, 32, (4, 8)) == 25  # what the metadata holds and the CLI prints
    with pytest.raises(ValueError, match=r"leaves LiteRT-LM 1 token\(s\)"):  # refused as the export refuses it
        token_budget(model, 8, (8,))
    for flags, message in ((["--format", "onnx"], "invalid choice: 'onnx'"),
                           (["--format", "litertlm", "--quantize", "int3"], "invalid choice: 'int3'")):
        with pytest.raises(SystemExit) as exit_status:  # argparse: usage and the error, status 2
            cli_main(["export", *flags, "--out", str(out)])
        assert exit_status.value.code == 2 and message in capsys.readouterr().err


def test_the_smallest_budget_export_allows_runs_a_one_token_prompt(model, tmp_path):
    """cache_length - (largest prefill - 1) = 3 tokens: the start token, "Hi" and one new token."""
    path = export_litertlm(model, str(tmp_path / "m.litertlm"), cache_length=16, prefill_lengths=(14,))
    tok = GPT2Tokenizer()
    new = model.generate([EOT_ID] + tok.encode("Hi"), max_new_tokens=1, stop_ids=[])
    assert _litert_lm_turns(path, ["Hi"], max_output_tokens=8) == [tok.decode(new)]


def test_unwritable_output_fails_before_converting(model, tmp_path, monkeypatch):
    def must_not_convert(*args, **kwargs):
        raise AssertionError("converted although the output cannot be written")

    monkeypatch.setattr("tf_gpt2.litert.litert_bytes", must_not_convert)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match="a_file is a file, not a directory"):
        export_litert(model, str(tmp_path / "a_file" / "sub" / "m.tflite"), CACHE, PREFILL)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="cannot write to"):
            export_litertlm(model, str(locked / "m.litertlm"), CACHE, PREFILL)
    assert sorted(os.listdir(tmp_path)) in (["a_file"], ["a_file", "locked"])


def test_a_failed_export_keeps_the_previous_file(model, tmp_path, monkeypatch):
    path = tmp_path / "m.tflite"
    export_litert(model, str(path), CACHE, iter(PREFILL))  # (lengths read once: an iterator was "not integers")
    assert LiteRTGenerator(str(path)).prefill_lengths == sorted(PREFILL)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr("tf_gpt2.litert.litert_bytes", fail)
    with pytest.raises(RuntimeError, match="converter crashed"):
        export_litert(model, str(path), CACHE, PREFILL)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.tflite"]


def test_export_cli_writes_a_litertlm_that_the_litert_lm_cli_runs(model, tmp_path, capsys):
    """`tf-gpt2 export --format litertlm`, then Google's own `litert-lm run`, as a user would on a laptop; the
    export says the conversation's token budget, past which the runtime answers short without an error."""
    model.save(tmp_path / "tiny.keras")
    out = str(tmp_path / "tiny.litertlm")
    assert cli_main(["export", "--format", "litertlm", "--model", str(tmp_path / "tiny.keras"), "--cache-length",
                     "32", "--prefill-lengths", "4,8", "--out", out]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"wrote {out}: LiteRT-LM holds 25 tokens in a conversation, its prompts and answers together (a prompt past "
        "them fails; an answer past them ends short, without an error)")
    cli = os.path.join(os.path.dirname(sys.executable), "litert-lm")
    run = subprocess.run([cli, "run", out, "--prompt", "Once upon a time", "--no-template"], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-2000:]
    printed = run.stdout.strip("\n")
    tok = GPT2Tokenizer()
    expected = tok.decode(model.generate([EOT_ID] + tok.encode("Once upon a time"), max_new_tokens=32, stop_ids=[]))
    assert len(printed) > 20 and expected.startswith(printed)  # it runs until the 25-token budget is spent


def test_a_file_that_is_no_tf_gpt2_tflite_is_named(tmp_path):
    """A .litertlm (LiteRT-LM's bundle, not a .tflite) or another model's .tflite is named with what it lacks."""
    import tensorflow as tf

    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing.tflite'} is no file"):
        LiteRTGenerator(str(tmp_path / "missing.tflite"))
    bundle = tmp_path / "gpt2.litertlm"
    bundle.write_bytes(b"LITERTLM" + bytes(200))
    with pytest.raises(ValueError, match=f"{bundle} is no .tflite LiteRT reads"):
        LiteRTGenerator(str(bundle))
    double = tf.function(lambda x: {"y": 2 * x}, input_signature=[tf.TensorSpec([1], tf.float32)])
    other = tmp_path / "other.tflite"
    other.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([double.get_concrete_function()]).convert())
    with pytest.raises(ValueError, match=f"{other} is not a tf_gpt2 on-device model: signatures"):
        LiteRTGenerator(str(other))
    for given in (other.read_bytes(), bytearray(other.read_bytes()), memoryview(other.read_bytes())):
        with pytest.raises(ValueError, match="^the model given as bytes is not a tf_gpt2 on-device model"):
            LiteRTGenerator(given)  # (a bytearray was taken for a path, and its bytes written into the message)
    with pytest.raises(ValueError, match=f"the model given as bytes is no .tflite .*; they name the file {other}: "
                       "give its path as a str"):  # (bytes are a model's content)
        LiteRTGenerator(os.fsencode(other))
    with pytest.raises(TypeError, match="LiteRTGenerator expects a .tflite path or its bytes, got int"):
        LiteRTGenerator(3)
    with pytest.raises(ValueError, match="the model given as bytes is empty"):
        LiteRTGenerator(b"")
    for threads in (0, True, 1.5):  # (0 was said as a model LiteRT cannot read)
        with pytest.raises(ValueError, match="num_threads must be a positive integer or None"):
            LiteRTGenerator(other.read_bytes(), num_threads=threads)


def test_a_missing_interpreter_names_the_extra_to_install(model, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as if the [litert] extra were absent
    with pytest.raises(ImportError, match=r'pip install "tf_gpt2\[litert\]"'):
        LiteRTGenerator(b"unused")
