import json
import os
import re
import shlex

import numpy as np
import pytest
from conftest import padded_gpt2

from tf_gpt2 import GPT2, GPT2Config
from tf_gpt2.cli import build_parser
from tf_gpt2.cli import main as cli_main
from tf_gpt2.generation import stream


@pytest.fixture(scope="module")
def model():
    return GPT2(GPT2Config(vocab_size=300, n_positions=48, n_embd=32, n_layer=2, n_head=4, initializer_range=0.3))


def naive_greedy(model, ids, n):
    ids = list(ids)
    for _ in range(n):
        ids.append(int(np.asarray(model(np.array([ids])))[0, -1].argmax()))
    return ids[-n:]


def test_greedy_kv_cache_equals_full_recompute(model):
    prompt = [5, 17, 250, 3, 99]
    assert model.generate(prompt, max_new_tokens=12, stop_ids=[]) == naive_greedy(model, prompt, 12)


def test_batched_mixed_lengths_equal_single_prompts(model):
    prompts = [[1, 2, 3, 4, 5, 6, 7], [42], [9, 8, 7]]
    batched = model.generate(prompts, max_new_tokens=6, stop_ids=[])
    assert batched == [model.generate(p, max_new_tokens=6, stop_ids=[]) for p in prompts]


def test_seeded_sampling_is_reproducible(model):
    """A seed samples the same tokens each call; without one, each call samples anew (it repeated seed 0's)."""
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_k=40, top_p=0.9, stop_ids=[])
    a = model.generate([1, 2, 3], seed=7, **kwargs)
    assert a == model.generate([1, 2, 3], seed=7, **kwargs)
    assert a != model.generate([1, 2, 3], seed=8, **kwargs)
    assert len({tuple(model.generate([1, 2, 3], **kwargs)) for _ in range(3)}) == 3
    assert len({tuple(stream(model, [1, 2, 3], **kwargs)) for _ in range(3)}) == 3
    import keras

    draws = []
    for _ in range(2):  # the global seed repeats a script's draws, as in Hugging Face and keras-hub
        keras.utils.set_random_seed(3)
        draws.append([model.generate([1, 2, 3], **kwargs) for _ in range(2)])
    assert draws[0] == draws[1] and draws[0][0] != draws[0][1]
    # A batch under one seed s samples row i with seed s + i (generate's docstring, serving.md), left padding aside.
    prompts = [[1, 2, 3], [42], [9, 8, 7, 6, 5]]
    assert model.generate(prompts, seed=7, **kwargs) == [model.generate(p, seed=7 + i, **kwargs)
                                                         for i, p in enumerate(prompts)]


def test_stream_yields_each_token_as_it_is_chosen(model, monkeypatch):
    """The first token comes after the prefill and one decode step, not after the whole answer."""
    import tf_gpt2.generation as generation

    ran, compiled = [], generation.compiled

    def counted(model, function):
        run = compiled(model, function)
        return lambda *args: ran.append(function.__name__) or run(*args)

    monkeypatch.setattr(generation, "compiled", counted)
    tokens = stream(model, [7, 8, 9], max_new_tokens=9, stop_ids=[])
    first = next(tokens)
    assert ran == ["prefill", "decode_step"]
    assert [first, *tokens] == model.generate([7, 8, 9], max_new_tokens=9, stop_ids=[])


@pytest.mark.parametrize("kwargs", [dict(), dict(temperature=0.9, top_p=0.8, seed=5, repetition_penalty=1.3)])
def test_stream_yields_the_tokens_of_generate(model, kwargs):
    expected = model.generate([7, 8, 9], max_new_tokens=9, stop_ids=[], **kwargs)
    assert list(stream(model, [7, 8, 9], max_new_tokens=9, stop_ids=[], **kwargs)) == expected


def test_repetition_penalty_discourages_repeats(model):
    plain = model.generate([1, 2], max_new_tokens=20, stop_ids=[])
    penalized = model.generate([1, 2], max_new_tokens=20, stop_ids=[], repetition_penalty=5.0)
    assert len(set(penalized)) > len(set(plain))


def test_repetition_penalty_is_transformers_on_positive_and_negative_logits():
    """A seen token's logit is divided by the penalty if positive, multiplied if negative (CTRL's rule, as
    transformers' RepetitionPenaltyLogitsProcessor): the greedy test above cannot tell a negative one divided."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tf_gpt2.generation import apply_repetition_penalty

    rng = np.random.default_rng(0)
    logits, seen_ids = rng.normal(0, 3, (2, 50)).astype("float32"), rng.integers(0, 50, (2, 12))
    seen = np.zeros((2, 50), bool)
    np.put_along_axis(seen, seen_ids, True, axis=1)
    ours = np.asarray(apply_repetition_penalty(logits, seen, 1.7))
    theirs = transformers.RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor(seen_ids), torch.tensor(logits))
    assert (logits[seen] < 0).sum() > 5 and (logits[seen] > 0).sum() > 5  # both kinds were penalized
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)


def test_top_k_one_is_greedy(model):
    greedy = model.generate([4, 5], max_new_tokens=8, stop_ids=[])
    assert model.generate([4, 5], max_new_tokens=8, temperature=1.3, top_k=1, seed=3, stop_ids=[]) == greedy


def test_a_noise_draw_at_the_top_of_its_range_keeps_to_the_filters():
    """At seed 1, step 69, column 34561 of a 50257-wide vocabulary the hash's top 24 bits are all ones, which in
    float32 rounded to u = 1 and Gumbel noise of +inf: a top-k of 1 (and a temperature near 0) then drew that
    column, about one sampled token in 330 with GPT-2's vocabulary."""
    from tf_gpt2.generation import Sampling, _hash_uniform, sample_next

    u = np.asarray(_hash_uniform(50257, np.array([1], np.int32), np.int32(69)))
    assert u.max() == np.float32(1 - 2**-24) and u.argmax() == 34561 and u.min() > 0
    logits = np.random.default_rng(0).normal(size=(2, 50257)).astype(np.float32)
    one = lambda value, dtype: np.full(2, value, dtype)  # noqa: E731
    sampling = Sampling(temperature=np.array([1.0, 1e-4], np.float32), top_k=np.array([1, 0], np.int32),
                        top_p=one(1.0, np.float32), repetition_penalty=one(1.0, np.float32),
                        seed=one(1, np.int32), max_new_tokens=one(1, np.int32), stop_ids=np.array([-1], np.int32),
                        pad_id=np.int32(0), vocab_end=np.int32(50257))
    assert np.asarray(sample_next(logits, sampling, np.int32(69))).tolist() == logits.argmax(-1).tolist()


def test_a_temperature_near_0_is_honoured_on_near_tied_logits():
    """Logits one float32 step apart (1 and 1 + 2**-23; 100 and 100 + 2**-17): at a temperature of 1e-9, or 2e-38,
    the larger is drawn at every seed (its odds e**119 to 1, or more). A temperature floored at 1e-6 drew either of
    the first two as a coin would; logits scaled before their largest is taken out made 100 / 2e-38 +inf, a tie."""
    from tf_gpt2.generation import Sampling, sample_next

    n = 64
    rows = lambda value, dtype: np.full(n, value, dtype)  # noqa: E731
    for near, temperature, among in ((1.0, 1e-9, {1}), (100.0, 2e-38, {1}), (1.0, 1.0, {0, 1, 2})):
        logits = np.broadcast_to(np.array([near, np.nextafter(np.float32(near), np.float32(200)), -2.0],
                                          np.float32), (n, 3))
        sampling = Sampling(temperature=rows(temperature, np.float32), top_k=rows(0, np.int32),
                            top_p=rows(1.0, np.float32), repetition_penalty=rows(1.0, np.float32),
                            seed=np.arange(n, dtype=np.int32), max_new_tokens=rows(1, np.int32),
                            stop_ids=np.array([-1], np.int32), pad_id=np.int32(0), vocab_end=np.int32(3))
        drawn = set(np.asarray(sample_next(logits, sampling, np.int32(5))).tolist())
        assert {1} <= drawn <= among and (temperature == 1.0) == (0 in drawn), temperature  # (at 1: both near ties)


def test_stop_ids_end_generation(model):
    free = model.generate([4, 5], max_new_tokens=8, stop_ids=[])
    stopped = model.generate([4, 5], max_new_tokens=8, stop_ids=[free[2]])
    assert stopped == free[: free.index(free[2]) + 1]
    assert model.generate([4, 5], max_new_tokens=8, stop_ids=free[2]) == stopped  # one id, as transformers takes it
    assert model.generate([4, 5], max_new_tokens=8, stop_ids=np.array(free[2])) == stopped  # (an argmax's 0-d array)


def test_array_scalars_and_arrays_are_taken_as_the_numbers_they_hold(model):
    """numpy, JAX and TensorFlow integers (an argmax, a tensor's length) are integers: a numpy top_k failed inside
    (list * numpy bool), and a JAX max_new_tokens, seed or stop id was "must be an integer, got Array(2)"; a JAX or
    TensorFlow prompt was no prompt; a batch mixing text and ids said "token ids must be integers"."""
    jnp = pytest.importorskip("jax.numpy")  # (on the CPU: conftest sets JAX_PLATFORMS)
    import tensorflow as tf

    sampled = model.generate([4, 5, 6], max_new_tokens=4, temperature=1.0, top_k=5, seed=1, stop_ids=[])
    for number in (np.int64, jnp.int32, lambda v: tf.constant(v, tf.int64)):
        assert model.generate([4, 5, 6], max_new_tokens=number(4), temperature=1.0, top_k=number(5), seed=number(1),
                              stop_ids=[]) == sampled
    for prompt in (jnp.array([4, 5, 6]), tf.constant([4, 5, 6]), [jnp.int32(4), np.int16(5), 6]):
        assert model.generate(prompt, max_new_tokens=4, temperature=1.0, top_k=5, seed=1, stop_ids=[]) == sampled
    assert model.generate([jnp.array([4, 5, 6]), np.array([7])], max_new_tokens=2) == model.generate(
        [[4, 5, 6], [7]], max_new_tokens=2)  # rows as arrays
    free = model.generate([4, 5, 6], max_new_tokens=6, stop_ids=[])
    stops = model.generate([4, 5, 6], max_new_tokens=6, stop_ids=jnp.array([free[2], 299]))
    assert stops == free[: free.index(free[2]) + 1]  # cut at the first of them
    for not_text in (tf.constant(["Hello", "there"]), np.array([b"Hi"]), [tf.constant("Hi").numpy()]):
        with pytest.raises(TypeError, match="prompt is bytes"):  # (TensorFlow's strings are bytes: no ids)
            model.generate(not_text, max_new_tokens=2)
    with pytest.raises(TypeError, match="prompt must be text, a list of token ids or a batch of them"):
        model.generate([np.int64(4), [5, 6]], max_new_tokens=2)
    for not_integer in (jnp.float32(4.0), np.array([4]), np.bool_(True)):
        with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
            model.generate([4, 5, 6], max_new_tokens=not_integer)
    with pytest.raises(TypeError, match="a batch is all texts or all lists of token ids, not both"):
        model.generate(["Hello", [5, 6]], max_new_tokens=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=[]), "prompt is empty"),
        (dict(prompt=[1] * 40, max_new_tokens=9), "exceeds the context of 48 positions: at most 8 new tokens fit$"),
        (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
        (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
        (dict(top_p=1.5), "top_p must be in \\(0, 1\\]"),
        (dict(temperature=-0.1), "temperature must be >= 0, got -0.1$"),  # as given, not float32's -0.100000001
        (dict(prompt=[1, 300]), "token ids must be in \\[0, 300\\)"),
        (dict(prompt=[[1, 2], [3], []]), r"prompt\(s\) \[2\] of the batch are empty"),  # the row named
        (dict(prompt=[[1, 2], [3, 300], [-1]]), r"got min -1 and max 300 \(prompt\(s\) \[1, 2\] of the batch\)"),
        (dict(temperature=float("nan")), "temperature must be a finite number, got nan"),
        (dict(repetition_penalty=float("nan")), "repetition_penalty must be a finite number"),
        (dict(repetition_penalty=float("inf")), "repetition_penalty must be a finite number"),
        (dict(top_p=float("nan")), "top_p must be a finite number"),
        # float32 computes them: one that overflows there, or a top_p that is 0 there, would sample nothing
        (dict(temperature=1e39), r"temperature must be a finite number in float32 \(as it is computed\).*got 1e\+39"),
        (dict(repetition_penalty=1e39), "repetition_penalty must be a finite number"),
        (dict(temperature=10**39), r"temperature must be a finite number in float32 .*got 10{39}$"),  # an int
        (dict(temperature=10**400), "temperature must be a finite number, got 10{400}$"),  # past float64: not numpy's
        (dict(tokenizer="GPT2Tokenizer"), "^tokenizer reads text, and token ids were given$"),  # (not ignored)
        (dict(temperature=1.0, top_p=1e-50), r"top_p must be a finite number in float32 .*, of magnitude at least "
                                             r"1.18e-38 where it is not 0 \(smaller ones compute as 0\), got 1e-50"),
        (dict(temperature=1.0, top_p=1e-40), "top_p must be .* got 1e-40"),  # float32 holds it; XLA flushes it to 0
        (dict(repetition_penalty=1e-40), "repetition_penalty must be .* got 1e-40"),
        # float32 holds these, but a seen logit divided by 1.2e-38 is +inf: a tie, its argmax the lowest id
        (dict(repetition_penalty=1.2e-38), r"repetition_penalty must be in \[1e-06, 1e\+06\] .*got 1.2e-38$"),
        (dict(repetition_penalty=2e6), r"repetition_penalty must be in \[1e-06, 1e\+06\]"),
        (dict(top_k=2.5), "top_k must be an integer, got 2.5"),
        (dict(top_k=True), "top_k must be an integer"),
        (dict(seed=2**40), "seed must be in \\[0, 2\\*\\*31\\)"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(stop_ids=[1.5]), "stop_ids entry must be an integer"),
        (dict(top_k=2**31), "top_k must be in \\[0, 2\\*\\*31\\)"),  # past int32: not an OverflowError
        (dict(top_k=-1), "top_k must be in \\[0, 2\\*\\*31\\)"),
        (dict(stop_ids=[2**40]), "stop_ids must be token ids in \\[0, 300\\) \\(the model's vocabulary\\)"),
        (dict(stop_ids=[50256]), "stop_ids must be token ids in \\[0, 300\\)"),  # never written: never stops
        # Filters without a temperature would sample nothing: greedy, silently.
        (dict(top_k=20), "^top_k=20 filters what is sampled, and temperature 0 samples nothing"),
        (dict(top_k=20, top_p=0.9), "^top_k=20 and top_p=0.9 filter what is sampled"),
        (dict(top_p=0.9), "^top_p=0.9 filters what is sampled"),
        (dict(vocab_end=0), "vocab_end must be in 1..300"),
        (dict(vocab_end=301), "vocab_end must be in 1..300"),
    ],
)
def test_bad_generation_arguments(model, kwargs, message):
    from tf_gpt2.tokenizer import GPT2Tokenizer

    kwargs = {"prompt": [1, 2], "max_new_tokens": 4, **kwargs}
    if kwargs.get("tokenizer") == "GPT2Tokenizer":
        kwargs["tokenizer"] = GPT2Tokenizer()
    with pytest.raises(ValueError, match=message):
        model.generate(**kwargs)
    with pytest.raises(ValueError, match=message):  # every prompt here is one: stream takes it too, and says so
        stream(model, **kwargs)  # at the call, not at the first token


def test_a_batch_too_long_names_its_rows_and_the_penalty_takes_its_bounds(model):
    for penalty in (1e-6, 1e6, np.float32(1e-6)):
        assert len(model.generate([[1, 2, 3], [4] * 44], max_new_tokens=4, repetition_penalty=penalty)[1]) == 4
    with pytest.raises(ValueError, match=r"^prompt\(s\) \[1, 3\] of the batch, the longest of 46 tokens \+ "
                                         r"max_new_tokens 4 exceeds the context of 48"):
        model.generate([[1, 2], [3] * 45, [4], [5] * 46], max_new_tokens=4)  # which rows are too long


def test_bytes_prompts_are_refused_not_read_as_ids(model):
    for prompt in (b"Hello", [b"Hello", b"world"], bytearray(b"Hi"), memoryview(b"Hi"), [memoryview(b"Hi")]):
        with pytest.raises(TypeError, match="prompt is bytes: decode it to str first"):
            model.generate(prompt, max_new_tokens=2)
    for stop_ids in (True, 1.0, "50256"):  # (a bool or float "is not iterable"; a string's characters are no ids)
        with pytest.raises(TypeError, match="stop_ids must be a token id or a list of them"):
            model.generate([1, 2], max_new_tokens=2, stop_ids=stop_ids)


def test_text_in_text_out_and_cli(capsys, tmp_path):
    model = GPT2(GPT2Config.from_preset("gpt2-tiny"))
    text = model.generate("Hello world", max_new_tokens=5)
    assert isinstance(text, str)
    long_prompt = "To be, or not to be, that is the question: whether 'tis"  # longer than the context's window
    assert cli_main(["demo", "--prompt", long_prompt, "--max-new-tokens", "4", "--steps", "15",  # not a multiple
                     "--out", str(tmp_path / "my demo")]) == 0                                          # of 10
    out, err = capsys.readouterr()
    assert "parameters" in out and long_prompt in out
    assert "the prompt has 55 characters; the model reads the last 48 of it" in err
    longer = ["demo", "--prompt", "To be", "--max-new-tokens", "4", "--steps", "20", "--out", str(tmp_path / "my demo")]
    assert cli_main(longer) == 2  # the run there has other settings: the flag the error names is demo's too
    assert "steps: 15 -> 20" in capsys.readouterr().err
    assert cli_main([*longer, "--resume-with-changes"]) == 0
    out = capsys.readouterr().out
    assert "To be" in out
    command = shlex.split(out.split("continue with:\n")[1])  # pasted into a shell: the path has a space
    assert command[command.index("--model") + 1] == str(tmp_path / "my demo" / "model.keras"), command
    assert command[:3] == ["tf-gpt2", "generate", "To be"], command  # its own prompt (it named ROMEO's)
    with np.load(tmp_path / "my demo" / "checkpoint.npz") as f:  # 5 steps more, not a compiled call of 10
        meta = json.loads(str(f["meta"]))
        iterations = [int(f[f"v{i}"]) for i, path in enumerate(meta["variables"]) if path.endswith("/iteration")]
    assert meta["step"] == 20 and iterations == [20], (meta["step"], iterations)
    settings = json.loads((tmp_path / "my demo" / "run.json").read_text())["settings"]  # the README's recipe
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8") as f:
        said = re.search(r"\(characters, (\d+) layers, (\d+) heads, width (\d+), context (\d+), batch (\d+)\)\s+for "
                         r"(\d+) steps at learning rate ([\d.e-]+)", f.read())
    model = settings["model"]
    assert settings["vocab"] == "char" and [int(n) for n in said.groups()[:6]] == [
        model["n_layer"], model["n_head"], model["n_embd"], model["n_positions"], settings["batch_size"],
        build_parser().parse_args(["demo"]).steps] and float(said[7]) == settings["learning_rate"]
    assert settings["block_size"] == model["n_positions"]
    saved = str(tmp_path / "my demo" / "model.keras")  # a character model that carries its vocabulary
    assert cli_main(["generate", "ROMEO:", "--model", saved, "--max-new-tokens", "20", "--temperature", "0.8"]) == 0
    written = capsys.readouterr().out
    assert written.startswith("ROMEO:") and written.endswith("\n") and len(written) - 1 == len("ROMEO:") + 20
    assert set(written) <= set(GPT2.from_pretrained(saved).config.characters)
    assert cli_main(["generate", "ROMEO:", "--model", saved, "--temperature", "0.8"]) == 0  # the default (64 failed)
    written, said = capsys.readouterr()
    assert len(written) - 1 == len("ROMEO:") + 58 and \
        "note: 58 new tokens, not 64: the context of 64 holds that many after the prompt" in said.splitlines()
    seed = re.search(r"^note: sampling with --seed (\d+) \(a new one each run; give it to write this text again\)$",
                     said, re.M)[1]  # each run samples anew, and says how to write its text again
    assert cli_main(["generate", "ROMEO:", "--model", saved, "--temperature", "0.8", "--seed", seed]) == 0
    assert capsys.readouterr().out == written
    assert cli_main(["generate", "R" * 64, "--model", saved]) == 2  # no room: said of the prompt, not of a flag
    assert "the prompt's 64 tokens fill the model's context of 64 positions: give a prompt of at most 63" in \
        capsys.readouterr().err
    prompt = tmp_path / "prompt.txt"  # a prompt file's errors name it
    for text, flags, said in (("ROMEO:\n日本", [], "characters '日', '本' are not in the model's vocabulary"),
                              ("R" * 60, ["--max-new-tokens", "5"], "prompt of 60 tokens + --max-new-tokens 5 exceeds "
                               "the context of 64 positions: at most 4 new tokens fit\n")):  # (the flag named once)
        prompt.write_text(text, encoding="utf-8")
        assert cli_main(["generate", "--prompt-file", str(prompt), "--model", saved, *flags]) == 2
        assert f"tf-gpt2 generate: error: {prompt}: {said}" in capsys.readouterr().err
    assert cli_main(["generate", "Hi", "--max-new-tokens", "3", "--random-init", "gpt2-tiny"]) == 0
    assert capsys.readouterr().out.startswith("Hi")
    assert cli_main(["generate", "Hi", "--top-p", "2", "--random-init", "gpt2-tiny"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err
    for command in (["generate", "Hi"], ["eval", __file__], ["export", "--out", "unused"]):
        assert cli_main(command) == 2  # an untrained model is never used by accident
        assert "no --model given" in capsys.readouterr().err


def test_top_p_is_taken_on_the_renormalised_top_k_as_hugging_face_does():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tf_gpt2.generation import filter_top_k_top_p

    logits = np.random.RandomState(0).randn(64, 50).astype(np.float32) * 2
    for top_k, top_p in ((2, 0.5), (5, 0.7), (10, 0.95), (0, 0.8), (7, 1.0)):
        ours = np.isfinite(np.asarray(filter_top_k_top_p(logits, np.int32(top_k), np.float32(top_p))))
        scores = torch.tensor(logits)
        if top_k:
            scores = transformers.TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1:
            scores = transformers.TopPLogitsWarper(top_p)(None, scores)
        np.testing.assert_array_equal(ours, np.isfinite(scores.numpy()), err_msg=f"top_k={top_k} top_p={top_p}")
    # The case that tells the two rules apart: p = (0.45, 0.35, 0.2), top-k 2 renormalises to (0.5625, 0.4375),
    # so a nucleus of 0.5 holds one token; on the unfiltered distribution it would hold two.
    two = np.log(np.array([[0.45, 0.35, 0.2]], np.float32))
    assert (np.isfinite(np.asarray(filter_top_k_top_p(two, np.int32(2), np.float32(0.5)))).tolist()
            == [[True, False, False]])


def test_a_tuple_of_prompts_is_a_batch(model):
    texts, gpt2 = ("Hello world", "The cat"), GPT2(GPT2Config.from_preset("gpt2-tiny"))
    assert gpt2.generate(texts, max_new_tokens=3) == gpt2.generate(list(texts), max_new_tokens=3)
    ids = ([1, 2, 3], [4, 5])
    assert (model.generate(ids, max_new_tokens=3, stop_ids=[])
            == model.generate(list(ids), max_new_tokens=3, stop_ids=[]))


def test_cli_prints_each_token_as_it_comes_and_never_half_a_character(monkeypatch):
    """`tf-gpt2 generate` streams: each token's text is written through (flushed) before the next is sampled, and a
    character whose bytes span tokens (' 语言' is 6 byte-level tokens) is held back until it is whole, never shown
    as U+FFFD. The model's choices are given here (a random model would seldom split a character); the printing is
    the CLI's, into a buffered stdout as a pipe's is."""
    import io
    import sys

    import tf_gpt2.generation

    written = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(written, encoding="utf-8"))  # (holds what is not flushed)
    chosen = [5525, 107, 255, 164, 101, 222, 50256]  # ' 语言', then <|endoftext|>
    seen = []  # what had reached the pipe when each token was asked for

    def choose(model, prompt, max_new_tokens, **settings):
        for token in chosen:
            seen.append(written.getvalue().decode("utf-8"))
            yield token

    monkeypatch.setattr(tf_gpt2.generation, "stream", choose)
    assert cli_main(["generate", "Say:", "--random-init", "gpt2-tiny", "--max-new-tokens", "10"]) == 0
    sys.stdout.flush()
    assert written.getvalue().decode("utf-8") == "Say: 语言\n"
    assert seen[1:] == ["Say:", "Say:", "Say: 语", "Say: 语", "Say: 语", "Say: 语言"]  # each character once whole


def test_cli_prints_no_tensorflow_start_up_lines_and_nothing_inside_the_text():
    """On a terminal stderr and stdout interleave: TensorFlow's C++ start-up lines (cudart_stub, cuInit),
    which TF_CPP_MIN_LOG_LEVEL cannot stop, are dropped (TF_CPP_MIN_LOG_LEVEL unset, or any level but 0, which
    asks for every line: then they are shown, as docs/troubleshooting.md says), and XLA's compile-time lines come
    before the text."""
    import os
    import subprocess

    from conftest import console_script

    unset = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    for env in (unset, {**unset, "TF_CPP_MIN_LOG_LEVEL": "0"}):
        run = subprocess.run([console_script(), "generate", "Hello there", "--random-init", "gpt2-tiny",
                              "--max-new-tokens", "8"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=300, env=env)
        assert run.returncode == 0, run.stdout[-2000:]
        if env is unset:
            assert run.stdout.startswith("Hello there"), run.stdout[:2000]
            assert "I0000" not in run.stdout and "W0000" not in run.stdout and "XLA" not in run.stdout
        else:
            assert "I0000" in run.stdout.split("Hello there")[0], run.stdout[:2000]  # TensorFlow's start-up lines


def test_prefill_and_the_decode_step_compile_once_whatever_the_step_prompt_or_settings(model):
    """TF's XLA bridge bakes an input into the program where an op needs it at compile time (a slice's
    start): then every new token index compiled the decode step again (about a second per token of
    `tf-gpt2 generate`). The compiled programs must not depend on any value, only on shapes."""
    from tf_gpt2.generation import _prepare, decode_step, prefill
    from tf_gpt2.xla import compiled

    def programs(prompt, step, **settings):
        request = _prepare(model, prompt, 12, **settings)
        start = compiled(model, prefill)
        state = start(request.prompt, request.new_slots)._replace(step=np.int32(step))
        return (start.experimental_get_compiler_ir(request.prompt, request.new_slots)(stage="hlo"),
                compiled(model, decode_step).experimental_get_compiler_ir(state, request.sampling)(stage="hlo"))

    first = programs([1, 2, 3], 0)
    assert programs([7, 8, 9, 4], 5, temperature=0.7, top_k=3, top_p=0.9, repetition_penalty=1.3, seed=11) == first


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 3, 1.0), (1.0, 0, 0.7),
                                                       (0.8, 4, 0.9)])
def test_sampled_frequencies_follow_the_filtered_softmax(temperature, top_k, top_p):
    """20000 rows (each its own seed) sample from fixed logits: each token's frequency lies within 4.5 standard
    errors of softmax(logits / T) after top-k, then top-p on the renormalised rest (measured: at most 1.8 over
    these cases); a token outside the filters is never drawn. A temperature applied as T instead of 1/T moves a
    frequency by 49 or more standard errors, a top-p that keeps one token too many by 36 or more."""
    from tf_gpt2.generation import Sampling, sample_next

    logits = np.array([2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -1.0, -3.0], np.float32)
    n = 20000
    rows = lambda value, dtype: np.full(n, value, dtype)  # noqa: E731
    sampling = Sampling(temperature=rows(temperature, np.float32), top_k=rows(top_k, np.int32),
                        top_p=rows(top_p, np.float32), repetition_penalty=rows(1.0, np.float32),
                        seed=np.arange(n, dtype=np.int32), max_new_tokens=rows(1, np.int32),
                        stop_ids=np.array([-1], np.int32), pad_id=np.int32(0), vocab_end=np.int32(len(logits)))
    tokens = np.asarray(sample_next(np.broadcast_to(logits, (n, len(logits))), sampling, np.int32(3)))
    frequency = np.bincount(tokens, minlength=len(logits)) / n

    probs = np.exp(logits / temperature - np.max(logits / temperature))
    order = np.argsort(-probs)
    keep = np.zeros(len(logits), bool)
    keep[order[: top_k or len(logits)]] = True
    probs = np.where(keep, probs, 0) / np.where(keep, probs, 0).sum()
    before = np.cumsum(probs[order]) - probs[order]  # mass of the tokens ranked above each one
    keep[order[before >= top_p]] = False
    expected = np.where(keep, probs, 0) / np.where(keep, probs, 0).sum()
    assert np.all(frequency[~keep] == 0)
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(frequency - expected)[keep] <= 4.5 * sigma[keep]), (frequency, expected)


def test_two_functions_of_one_name_are_compiled_apart(model):
    """The compile cache is keyed by the function, not its name: two lambdas are two programs."""
    from tf_gpt2.xla import compiled

    ids = np.array([[1, 2, 3]], np.int32)
    last, first = (lambda m, x: m(x)[:, -1]), (lambda m, x: m(x)[:, 0])
    assert last.__name__ == first.__name__
    full = np.asarray(model(ids))
    np.testing.assert_allclose(np.asarray(compiled(model, last)(ids)), full[:, -1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(compiled(model, first)(ids)), full[:, 0], atol=1e-5)


def test_text_continues_only_in_ids_its_tokenizer_reads(tmp_path, capsys):
    """A model whose vocabulary is padded past GPT-2's 50,257 (nanoGPT's 50,304; a converted checkpoint keeps the
    rows) continues text only in GPT-2's ids, in every text path: `generate`, `stream`, the CLI and the served
    `generate_text`; given ids, it may choose any of its ids. Its padding rows here outscore every token, so a
    path that let them through would choose one (and fail to decode it)."""
    import tensorflow as tf

    from tf_gpt2.export import export_saved_model
    from tf_gpt2.files import save_keras
    from tf_gpt2.tokenizer import VOCAB_SIZE, GPT2Tokenizer

    model = padded_gpt2()
    assert all(t >= VOCAB_SIZE for t in model.generate([15496], max_new_tokens=4, stop_ids=[]))
    assert all(t < VOCAB_SIZE for t in model.generate([15496], max_new_tokens=4, stop_ids=[], vocab_end=VOCAB_SIZE))
    with pytest.raises(ValueError, match=r"stop_ids \[50300\] are never written: tokens are chosen among ids below "
                                         "50257"):  # a row would run to max_new_tokens
        model.generate("Hello", max_new_tokens=4, stop_ids=[50256, 50300])
    assert all(t < 1000 for t in model.generate([15496], max_new_tokens=2, vocab_end=1000))  # the default stop: inert
    for generating in (model.generate, lambda *a, **k: stream(model, *a, **k)):  # refused before any token
        with pytest.raises(ValueError, match=r"^vocab_end 50304 is past the 50,257 ids the prompt's text is read in"):
            generating("Hello", max_new_tokens=4, vocab_end=50304)
    settings = [dict(), dict(temperature=1.0, seed=3), dict(tokenizer=GPT2Tokenizer())]
    for kwargs in settings:
        text = model.generate("Hello", max_new_tokens=4, stop_ids=[], **kwargs)
        assert isinstance(text, str) and len(text) > 0
        assert all(t < VOCAB_SIZE for t in stream(model, "Hello", max_new_tokens=4, stop_ids=[], **kwargs))
    save_keras(model, str(tmp_path / "wide.keras"))
    assert cli_main(["generate", "Hello", "--model", str(tmp_path / "wide.keras"), "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("Hello")
    served = tf.saved_model.load(export_saved_model(model, str(tmp_path / "m"), max_new_tokens_limit=4))
    knobs = dict(max_new_tokens=tf.constant([4]), temperature=tf.constant([0.0]), top_k=tf.constant([0]),
                 top_p=tf.constant([1.0]), seed=tf.constant([0]))
    answer = served.signatures["generate_text"](text=tf.constant(["Hello"]), **knobs)
    assert answer["error"].numpy()[0] == b"" and answer["length"].numpy()[0] == 4
    assert np.all(answer["token_ids"].numpy()[0, :4] < VOCAB_SIZE)
    by_ids = served.signatures["generate"](token_ids=tf.constant([[15496]]), length=tf.constant([1]), **knobs)
    assert np.all(by_ids["token_ids"].numpy()[0, :4] >= VOCAB_SIZE)


def test_a_batch_of_texts_names_the_prompt_its_tokenizer_cannot_read():
    model = GPT2(GPT2Config(vocab_size=2, characters="ab", n_positions=8, n_embd=8, n_layer=1, n_head=1))
    with pytest.raises(ValueError, match=r"^prompt \[2\] of the batch: character 'x' is not in the model's"):
        model.generate(["ab", "ba", "abx"], max_new_tokens=1)
    with pytest.raises(ValueError, match="^character 'x' is not in the model's"):  # one prompt: no row to name
        model.generate("abx", max_new_tokens=1)
    with pytest.raises(ValueError, match="^characters 'Z', 'e', 'r' are not in"):  # each, not a word ("Zer")
        model.generate("Zebra", max_new_tokens=1)


def test_a_vocabulary_smaller_than_gpt2s_without_characters_reads_no_text(model):
    """Its ids are not GPT-2's, so text is refused by name (not read as GPT-2 ids past its vocabulary); ids work."""
    from tf_gpt2.evaluation import evaluate

    for read in (lambda: model.generate("Hello", max_new_tokens=2), lambda: evaluate(model, "Hello world")):
        with pytest.raises(ValueError, match="a model of 300 tokens without its characters has no text tokenizer"):
            read()
    assert len(model.generate([1, 2], max_new_tokens=2, stop_ids=[])) == 2


def test_a_reader_that_stops_reading_ends_the_cli_quietly():
    """`tf-gpt2 generate ... | head -c 5`: the closed pipe ends the command with status 1 and nothing on stderr (no
    "error: [Errno 32] Broken pipe", no "Exception ignored" at exit). The reader here is gone before the first write,
    so the write fails whatever the timing."""
    import os
    import subprocess

    from conftest import console_script

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run([console_script(), "generate", "Hello", "--random-init", "gpt2-tiny", "--max-new-tokens",
                              "4"], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert run.returncode == 1 and "Broken pipe" not in run.stderr and "Exception" not in run.stderr, run.stderr


def test_only_the_logits_of_ids_that_may_be_chosen_must_be_finite():
    """Rows of the tied embedding past `vocab_end` that are NaN (never read by the prompt) give NaN logits there
    alone: ids below `vocab_end` are still chosen, while a choice among all ids refuses."""
    model = GPT2(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    model.wte.embeddings.assign(np.where(np.arange(64)[:, None] >= 60, np.nan, model.wte.embeddings.numpy()))
    for kwargs in (dict(), dict(temperature=1.0, seed=3)):
        answer = model.generate([1, 2], max_new_tokens=4, stop_ids=[], vocab_end=60, **kwargs)
        assert len(answer) == 4 and max(answer) < 60
        assert len(list(stream(model, [1, 2], max_new_tokens=4, stop_ids=[], vocab_end=60, **kwargs))) == 4
        with pytest.raises(FloatingPointError, match="non-finite logits"):
            model.generate([1, 2], max_new_tokens=4, stop_ids=[], **kwargs)


def test_logits_that_are_not_finite_choose_no_token_in_any_path(tmp_path, capsys):
    """A model that overflows (here at position 2: its position embedding is past float32's range) gives NaN
    logits there. No path may pass argmax(NaN) off as its choice: `generate` and `stream` raise naming the prompt,
    the CLI says so in one line, so does the on-device loop, and a served row gets an error while the row beside it
    is answered."""
    import tensorflow as tf

    from tf_gpt2.evaluation import evaluate
    from tf_gpt2.export import export_saved_model
    from tf_gpt2.files import save_keras
    from tf_gpt2.litert import LiteRTGenerator, export_litert

    letters = "abcdefghijklmnopqrstuvwxyz "
    model = GPT2(GPT2Config(vocab_size=len(letters), characters=letters, n_positions=16, n_embd=32, n_layer=1,
                            n_head=2))
    model.wpe.embeddings.assign(np.where(np.arange(16)[:, None] == 2, 3e38, model.wpe.embeddings.numpy()))
    assert not np.isfinite(np.asarray(model(np.array([[1, 2, 3]])))[0, 2]).any()
    long, short = [7, 8, 9], [7]  # "hij", "h": the long one's next token comes from position 2, the short one's never
    assert len(model.generate(short, max_new_tokens=2, stop_ids=[])) == 2
    with pytest.raises(FloatingPointError, match=r"non-finite logits \(NaN or inf\) for prompt\(s\) \[0\] of the"):
        model.generate([long, short], max_new_tokens=2, stop_ids=[])
    with pytest.raises(FloatingPointError, match=r"non-finite logits \(NaN or inf\): it cannot choose"):
        list(stream(model, long, max_new_tokens=2, stop_ids=[]))
    assert len(list(stream(model, short, max_new_tokens=2, stop_ids=[]))) == 2
    with pytest.raises(FloatingPointError, match=r"non-finite log-probabilities \(NaN or inf\) on this text"):
        evaluate(model, "hijk", context=4)  # (its position 2 scores the fourth letter)
    save_keras(model, str(tmp_path / "over.keras"))
    assert cli_main(["generate", "hij", "--model", str(tmp_path / "over.keras"), "--max-new-tokens", "2"]) == 2
    assert "error: the model produced non-finite logits (NaN or inf): it cannot" in capsys.readouterr().err
    phone = LiteRTGenerator(export_litert(model, str(tmp_path / "over.tflite"), cache_length=8, prefill_lengths=(4,)))
    assert len(phone.generate(short, max_new_tokens=2)) == 2
    with pytest.raises(FloatingPointError, match=r"non-finite logits \(NaN or inf\): it cannot choose"):
        phone.generate(long, max_new_tokens=2)
    for xla in (False, True):
        served = tf.saved_model.load(export_saved_model(model, str(tmp_path / f"m{xla}"), xla=xla))
        answer = served.signatures["generate"](
            token_ids=tf.constant([long, short + [0, 0]]), length=tf.constant([3, 1]), max_new_tokens=tf.constant([2]),
            temperature=tf.constant([0.0]), top_k=tf.constant([0]), top_p=tf.constant([1.0]), seed=tf.constant([0]))
        assert answer["error"].numpy().tolist() == [b"the model produced non-finite logits (NaN or inf)", b""], xla
        assert answer["length"].numpy().tolist() == [0, 2]


def test_prompts_of_many_lengths_log_no_retracing_warning():
    """Each prompt length bucket is a program of its own, by design: TensorFlow's "triggered tf.function retracing"
    warning (two of them in a session of six prompt lengths) blamed the caller's loop."""
    import logging

    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        model = GPT2(GPT2Config(vocab_size=64, n_positions=256, n_embd=16, n_layer=1, n_head=2))
        for length in (3, 12, 20, 40, 70, 130):
            model.generate([[1] * length], max_new_tokens=2)
    finally:
        logger.removeHandler(handler)
    assert not [line for line in said if "retracing" in line], said
