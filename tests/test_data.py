import json
import os

import numpy as np
import pytest

from tf_gpt2 import GPT2Tokenizer
from tf_gpt2.cli import main as cli_main
from tf_gpt2.data import TokenShards, embedded_corpus, prepare, resolve_inputs

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "texts" / "more").mkdir(parents=True)
    (tmp_path / "texts" / "a.txt").write_text(TEXT)
    (tmp_path / "texts" / "more" / "b.txt").write_text("Hello world. " * 200)
    return tmp_path / "texts"


def test_prepare_gpt2_shards_manifest_and_split(corpus, tmp_path):
    manifest = prepare(str(corpus), str(tmp_path / "out"), val_fraction=0.2, shard_tokens=500, verbose=False)
    assert manifest["vocab"] == "gpt2" and manifest["vocab_size"] == 50257
    assert len(manifest["splits"]["train"]) > 1  # several shards
    train, val = TokenShards(str(tmp_path / "out"), "train"), TokenShards(str(tmp_path / "out"), "val")
    tok = GPT2Tokenizer()
    everything = np.concatenate([train.window(0, len(train)), val.window(0, len(val))]).tolist()
    expected = tok.encode(TEXT) + [tok.eot_id] + tok.encode("Hello world. " * 200) + [tok.eot_id]
    assert everything == expected  # nothing lost, nothing reordered, documents separated
    assert 0.15 < len(val) / len(everything) < 0.25
    saved = json.load(open(tmp_path / "out" / "manifest.json"))
    assert saved["splits"] == manifest["splits"]


def test_windows_are_deterministic_and_shifted(corpus, tmp_path):
    prepare(str(corpus), str(tmp_path / "out"), shard_tokens=300, verbose=False)
    shards = TokenShards(str(tmp_path / "out"), "train")
    x, y = shards.batch(step=5, block_size=16, batch_size=4, seed=1)
    assert x.shape == (4, 16) and x.dtype == np.int32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(shards.batch(5, 16, 4, 1)[0], x)
    assert not np.array_equal(shards.batch(6, 16, 4, 1)[0], x)
    ds = shards.dataset(block_size=16, batch_size=4, seed=1, start_step=5, steps=2)
    first = next(iter(ds))
    np.testing.assert_array_equal(first[0].numpy(), x)  # step 5 is the same batch however it is reached
    seq = list(shards.sequential(block_size=16, batch_size=2, max_batches=1))[0]
    np.testing.assert_array_equal(seq[0].numpy().ravel(), shards.window(0, 32))


def test_window_across_shards(corpus, tmp_path):
    prepare(str(corpus), str(tmp_path / "out"), shard_tokens=100, verbose=False)
    shards = TokenShards(str(tmp_path / "out"), "train")
    whole = np.concatenate([np.asarray(p) for p in shards.parts])
    np.testing.assert_array_equal(shards.window(95, 210), whole[95:305])


def test_char_vocabulary_and_embedded_corpus(tmp_path):
    manifest = prepare(embedded_corpus(), str(tmp_path / "c"), vocab="char", verbose=False)
    assert manifest["vocab_size"] == 65 and manifest["chars"][:3] == ["\n", " ", "!"]
    total = sum(s["tokens"] for split in manifest["splits"].values() for s in split)
    assert total == 1_115_394  # every character of tinyshakespeare


def test_resolve_inputs_glob_and_errors(corpus, tmp_path):
    assert resolve_inputs(str(corpus / "**" / "*.txt")) == [str(corpus / "a.txt"), str(corpus / "more" / "b.txt")]
    with pytest.raises(FileNotFoundError, match="no data file matches"):
        resolve_inputs(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="the data is empty"):
        prepare(str(tmp_path / "empty.txt"), str(tmp_path / "o"), verbose=False)
    with pytest.raises(ValueError, match="vocab must be"):
        prepare(str(corpus), str(tmp_path / "o"), vocab="bytes", verbose=False)


def test_corrupt_or_missing_shards(corpus, tmp_path):
    out = tmp_path / "out"
    prepare(str(corpus), str(out), verbose=False)
    with open(out / "train_0000.bin", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ValueError, match="train_0000.bin is missing or corrupt"):
        TokenShards(str(out), "train")
    with pytest.raises(FileNotFoundError, match="run `tf-gpt2 prepare` first"):
        TokenShards(str(tmp_path), "train")
    shards = TokenShards(str(out), "val")
    with pytest.raises(ValueError, match="fewer than block_size"):
        shards.dataset(block_size=10_000, batch_size=2)
    with pytest.raises(ValueError, match="must be positive"):
        shards.dataset(block_size=8, batch_size=0)


def test_prepare_cli(corpus, tmp_path, capsys):
    assert cli_main(["prepare", str(corpus / "a.txt"), "--out", str(tmp_path / "p"), "--vocab", "char"]) == 0
    assert "train:" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "p" / "manifest.json")
