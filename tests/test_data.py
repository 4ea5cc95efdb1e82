import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest

from tf_gpt2 import GPT2Tokenizer
from tf_gpt2.cli import main as cli_main
from tf_gpt2.data import TokenShards, _is_output, embedded_corpus, prepare, read_text, resolve_inputs

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


def test_char_vocabulary_and_embedded_corpus(tmp_path, capsys):
    manifest = prepare(embedded_corpus(), str(tmp_path / "c"), vocab="char")
    # (`tf-gpt2 prepare --out x` with an empty $FILES: "tokenizing 1 file(s)", the corpus unnamed)
    assert capsys.readouterr().out.startswith("tokenizing the embedded Tiny Shakespeare, 1.1 MB")
    assert manifest["vocab_size"] == 65 and manifest["chars"][:3] == ["\n", " ", "!"]
    total = sum(s["tokens"] for split in manifest["splits"].values() for s in split)
    assert total == 1_115_394  # every character of tinyshakespeare
    (tmp_path / "small.txt").write_text("abc\n" * 2340)
    prepare(str(tmp_path / "small.txt"), str(tmp_path / "s"), vocab="char")
    assert capsys.readouterr().out.startswith("tokenizing 1 file(s), 9,360 bytes of text")  # (said "0.0 MB")


def test_first_place_names_the_file_and_line_of_a_character(tmp_path):
    """A refusal of characters names where the first stands: file and line, across files, CRLF and gzip."""
    import gzip

    from tf_gpt2.data import first_place

    (tmp_path / "a.txt").write_bytes("один\r\nдва\r\n".encode())
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("abc\n\nde]f\nЖ\n")
    files = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt.gz")]
    assert first_place(files, ["в", "Ж"]) == f"'в' in {files[0]}, line 2"
    assert first_place(files, ["Ж", "]"]) == f"']' in {files[1]}, line 3"
    assert first_place(files, ["z"]) == "" and first_place(files, []) == ""


def test_resolve_inputs_glob_and_errors(corpus, tmp_path):
    both = [str(corpus / "a.txt"), str(corpus / "more" / "b.txt")]
    assert resolve_inputs(str(corpus / "**" / "*.txt")) == both
    prepare(str(corpus / "a.txt"), str(corpus / "ds"), vocab="char", verbose=False)  # tf_gpt2's own folder there
    (corpus / "more" / "notes.md").write_text("not read from a folder")
    for named in ("manifest.json", sorted(os.listdir(corpus / "ds"))[-1]):  # a shard: its bytes may be valid UTF-8
        for read in (resolve_inputs, read_text):  # prepare's and train's, eval's
            with pytest.raises(ValueError, match=f"ds/{named} is a file of .*ds, a dataset, .* or an export, not text"):
                read(str(corpus / "ds" / named))
    for pattern in ("*", "**"):  # a folder a glob matches is read as one named; the dataset's is said and skipped
        with pytest.warns(UserWarning, match=r"or an export \(not text\), not read: .*ds$"):
            assert resolve_inputs(str(corpus / pattern)) == both
    from tf_gpt2 import GPT2, GPT2Config

    GPT2(GPT2Config(vocab_size=50257, n_positions=8, n_embd=8, n_layer=1, n_head=1)).save_pretrained(corpus / "hf")
    with pytest.warns(UserWarning, match=r"\*\.txt' matches a dataset, .* not read: .*hf$"):  # its merges.txt
        assert resolve_inputs(str(corpus / "**" / "*.txt")) == both
    for folder in ("hf", "ds"):  # named itself (`--data hf`): it trained on merges.txt
        with pytest.raises(ValueError, match=f"{folder} is a dataset, .* or an export by its files .*, not a folder "
                                             r"of text: to read text kept there, name the files themselves \(a glob "
                                             r"skips such a folder too\)"):
            resolve_inputs(str(corpus / folder))
    (corpus / "more" / "hparams.json").write_text('{"lr": 0.1}')  # an experiment's log, no checkpoint: a text folder
    assert resolve_inputs(str(corpus / "more" / "*.txt")) == both[1:]
    with pytest.raises(FileNotFoundError, match="no data file matches"):
        resolve_inputs(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="the data is empty"):
        prepare(str(tmp_path / "empty.txt"), str(tmp_path / "o"), verbose=False)
    with pytest.raises(ValueError, match="vocab must be"):
        prepare(str(corpus), str(tmp_path / "o"), vocab="bytes", verbose=False)
    for name in ("shard_tokens", "chunk_bytes"):  # 0 gave a dataset of one <|endoftext|>, or numpy's error
        with pytest.raises(ValueError, match=f"{name} must be a positive integer, got 0"):
            prepare(str(corpus), str(tmp_path / "o"), verbose=False, **{name: 0})
    prepare(str(corpus), str(tmp_path / "o"), verbose=False)
    shards = TokenShards(str(tmp_path / "o"), "train")
    with pytest.raises(ValueError, match="steps must be a positive integer or None, got 0"):  # 0 gave endless batches
        shards.dataset(4, 2, steps=0)
    with pytest.raises(ValueError, match="max_batches must be a positive integer or None, got 0"):  # or every one
        shards.sequential(4, 2, max_batches=0)


def test_corrupt_or_missing_shards(corpus, tmp_path):
    out = tmp_path / "out"
    manifest = prepare(str(corpus), str(out), verbose=False)
    with open(out / manifest["splits"]["train"][0]["file"], "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ValueError, match=r"train_[0-9a-f]{8}_0000.bin is missing or corrupt"):
        TokenShards(str(out), "train")
    with pytest.raises(FileNotFoundError, match="run `tf-gpt2 prepare` first"):
        TokenShards(str(tmp_path), "train")
    shards = TokenShards(str(out), "val")
    with pytest.raises(ValueError, match="fewer than block_size"):
        shards.dataset(block_size=10_000, batch_size=2)
    with pytest.raises(ValueError, match="must be positive"):
        shards.dataset(block_size=8, batch_size=0)


def test_prepare_cli_writes_a_manifest_and_reports_the_splits(corpus, tmp_path, capsys):
    """...and says where a dataset replaced an earlier one (it did so without a word, as convert and export do not);
    a run's or a checkpoint's folder is refused (the dataset's files mixed into it)."""
    from tf_gpt2 import GPT2, GPT2Config

    command = ["prepare", str(corpus / "a.txt"), "--out", str(tmp_path / "p"), "--vocab", "char"]
    assert cli_main(command) == 0
    printed = capsys.readouterr().out
    assert "train:" in printed and not {"\r", "\b", "\x1b"} & set(printed), printed  # a file: no bar redrawn in it
    assert f"\nwrote {tmp_path / 'p'}\ntrain:" in printed and os.path.exists(tmp_path / "p" / "manifest.json")
    assert cli_main(command) == 0
    assert f"\nreplaced the earlier dataset in {tmp_path / 'p'}\ntrain:" in capsys.readouterr().out
    GPT2(GPT2Config(vocab_size=40, n_positions=8, n_embd=8, n_layer=1, n_head=1)).save_pretrained(tmp_path / "hf")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"settings": {}}')
    for out, kind in (("hf", "a checkpoint or an export"), ("run", "a training run"), ("mixed", "a training run")):
        if out == "mixed":  # a run an earlier prepare wrote a dataset into: refused all the same
            shutil.copytree(tmp_path / "p", tmp_path / "mixed")
            shutil.copy(tmp_path / "run" / "run.json", tmp_path / "mixed")
        assert cli_main(["prepare", str(corpus / "a.txt"), "--out", str(tmp_path / out)]) == 2
        assert capsys.readouterr().err.strip() == (f"tf-gpt2 prepare: error: {tmp_path / out} is the folder of {kind}: "
                                                   "a dataset written there would mix its files with those; give the "
                                                   "dataset a folder of its own")
    assert sorted(os.listdir(tmp_path / "run")) == ["run.json"]


def _dataset_state(directory):
    """Every file of a prepared dataset with its bytes, and the tokens it serves."""
    files = {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory)) if name != ".lock"}
    shards = TokenShards(str(directory), "train")
    return files, shards.window(0, len(shards)).tolist()


def test_a_failed_prepare_keeps_the_dataset_already_there(corpus, tmp_path, monkeypatch):
    import tf_gpt2.data as data

    out = tmp_path / "out"
    prepare(str(corpus / "a.txt"), str(out), shard_tokens=200, verbose=False)
    before = _dataset_state(out)
    written = []
    real_write = data._ShardWriter.write

    def full_disk_later(self, ids):  # a few shards make it to disk, then the disk is full
        written.append(len(ids))
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        real_write(self, ids)

    monkeypatch.setattr(data._ShardWriter, "write", full_disk_later)
    with pytest.raises(OSError, match="No space left"):
        prepare(str(corpus), str(out), shard_tokens=200, verbose=False)
    assert _dataset_state(out) == before  # same files, same bytes, same tokens: nothing half-replaced
    monkeypatch.undo()

    # A text written to (or cut short) while it is read: refused, not made a dataset of text it never held whole.
    real_chunks = data._chunks

    def written_meanwhile(path, *args, **kwargs):
        for i, chunk in enumerate(real_chunks(path, *args, **kwargs)):
            yield chunk
            if i == 0:
                with open(path, "a", encoding="utf-8") as f:
                    f.write("more text\n")

    monkeypatch.setattr(data, "_chunks", written_meanwhile)
    with pytest.raises(ValueError, match=r"a.txt changed while it was being read \([\d,]+ bytes before, [\d,]+ now\)"):
        prepare(str(corpus / "a.txt"), str(out), shard_tokens=200, verbose=False, chunk_bytes=64)
    assert _dataset_state(out) == before
    monkeypatch.undo()
    (corpus / "a.txt").write_text((corpus / "a.txt").read_text()[:-len("more text\n")])

    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8 text"):
        prepare([str(corpus / "a.txt"), str(tmp_path / "latin1.txt")], str(out), verbose=False)
    assert _dataset_state(out) == before
    # Ctrl-C while the sources are stamped (a minute for a large corpus, after the last shard): no shard stays.
    monkeypatch.setattr(data, "source_stamps", lambda files: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prepare(str(corpus), str(out), shard_tokens=200, verbose=False)
    assert _dataset_state(out) == before


def test_a_shard_that_outgrows_a_size_limit_is_named(tmp_path):
    """A full disk or a file-size limit (`ulimit -f`) while writing a shard names the shard, not only the errno."""
    import resource

    (tmp_path / "big.txt").write_text(TEXT * 30)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, hard))  # (Python ignores SIGXFSZ: the write fails instead)
    try:
        with pytest.raises(OSError, match=r"File too large \(while writing\): '.*out/train_[0-9a-f]{8}_0000.bin'"):
            prepare(str(tmp_path / "big.txt"), str(tmp_path / "out"), verbose=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not (tmp_path / "out").exists()


def test_prepare_replaces_a_dataset_and_removes_its_old_and_orphaned_shards(corpus, tmp_path):
    out = tmp_path / "out"
    old = prepare(str(corpus / "a.txt"), str(out), shard_tokens=200, verbose=False)
    orphan = out / "train_0123abcd_0000.bin"  # what a killed preparation leaves
    orphan.write_bytes(b"\x00\x00")
    new = prepare(str(corpus / "more" / "b.txt"), str(out), shard_tokens=200, verbose=False)
    listed = {s["file"] for split in new["splits"].values() for s in split}
    assert set(os.listdir(out)) == listed | {"manifest.json", ".lock"}
    assert not listed & {s["file"] for split in old["splits"].values() for s in split}
    assert TokenShards(str(out), "train").window(0, 4).tolist() == GPT2Tokenizer().encode("Hello world. " * 2)[:4]


def test_shards_with_ids_outside_their_vocabulary_are_refused(corpus, tmp_path):
    """The manifest records each shard's largest id (no shard is read in full to start a run); an id changed
    since is refused when it is read, an old manifest without the record has its shards scanned on load."""
    out = tmp_path / "out"
    manifest = prepare(str(corpus / "a.txt"), str(out), vocab="char", verbose=False)
    train = manifest["splits"]["train"][0]
    shard = out / train["file"]
    ids = np.fromfile(shard, dtype="<u2")
    assert train["max_id"] == ids.max() < manifest["vocab_size"]
    ids[7] = manifest["vocab_size"]  # one id past the vocabulary, e.g. shards written with another one
    ids.tofile(shard)
    bad = rf"shard .*{train['file']} holds token id {manifest['vocab_size']}, outside the vocabulary"
    shards = TokenShards(str(out), "train")
    assert shards.window(8, 20).max() < manifest["vocab_size"]  # the rest reads as before
    for read in (lambda: shards.window(0, 10), lambda: shards.sequential(16, 2)):  # training's and evaluation's
        with pytest.raises(ValueError, match=bad):
            read()
    del train["max_id"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=bad):
        TokenShards(str(out), "train")


def test_bad_gzip_and_malformed_manifests_name_the_file(corpus, tmp_path):
    (tmp_path / "fake.txt.gz").write_bytes(b"not gzip at all, just text")
    with pytest.raises(ValueError, match="fake.txt.gz is not a gzip file"):
        prepare(str(tmp_path / "fake.txt.gz"), str(tmp_path / "o"), verbose=False)
    import gzip

    whole = gzip.compress(TEXT.encode() * 20)
    (tmp_path / "cut.txt.gz").write_bytes(whole[: len(whole) // 2] + whole[-8:])  # truncated in the middle
    with pytest.raises(ValueError, match="cut.txt.gz is not a readable gzip file"):
        prepare(str(tmp_path / "cut.txt.gz"), str(tmp_path / "o"), verbose=False)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text("{\"splits\": ")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        TokenShards(str(tmp_path / "m"))
    (tmp_path / "m" / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a tf_gpt2 dataset manifest"):
        TokenShards(str(tmp_path / "m"))
    for splits in ({"train": [{"file": "a.bin"}]}, {"train": [{"file": "a.bin", "tokens": "9"}]}, {"train": 3}):
        (tmp_path / "m" / "manifest.json").write_text(json.dumps({"vocab_size": 5, "splits": splits}))
        with pytest.raises(ValueError, match="manifest.json: split 'train' is not a list of shards, each with a file"):
            TokenShards(str(tmp_path / "m"))


def test_a_folder_that_cannot_be_listed_is_named_not_skipped(corpus, monkeypatch):
    """A subfolder without read permission (or on a failing disk) held texts: the read fails naming it."""
    private = corpus / "more"
    scandir = os.scandir

    def refused(path="."):
        if os.fspath(path) == str(private):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refused)
    with pytest.raises(PermissionError, match=r"Permission denied: its texts cannot be read: '.*texts/more'"):
        resolve_inputs(str(corpus))
    monkeypatch.undo()
    # A folder that can be listed but not entered (mode r--): its texts' names are there, their files unreadable.
    stat = os.stat

    def unreachable(path, *args, **kwargs):
        if os.fspath(path).startswith(str(private) + os.sep):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", unreachable)
    with pytest.raises(PermissionError, match=r"Permission denied: '.*texts/more/b.txt'"):
        resolve_inputs(str(corpus))


def test_a_folder_is_read_without_our_outputs_hidden_files_or_special_files(corpus):
    """Preparing a folder into a subfolder of itself, twice: the second run reads the same text, not the first
    run's manifest, lock and shards; hidden files, a named pipe and a broken link are skipped too."""
    (corpus / ".notes").write_text("private ~~~~ notes")
    os.mkfifo(corpus / "pipe")  # reading it would block forever
    os.symlink(corpus / "gone", corpus / "dangling")
    first = prepare(str(corpus), str(corpus / "prepared"), vocab="char", verbose=False)
    second = prepare(str(corpus), str(corpus / "prepared"), vocab="char", verbose=False)
    expected = sorted(str(corpus / p) for p in ("a.txt", os.path.join("more", "b.txt")))
    assert first["sources"] == second["sources"] == expected
    assert first["chars"] == second["chars"] and "~" not in second["chars"]
    (corpus / "run").mkdir()
    (corpus / "run" / "run.json").write_text('{"settings": {}}')  # a training run's folder
    (corpus / "run" / "log.txt").write_text("step 1 loss 3.2")
    assert resolve_inputs(str(corpus)) == expected
    assert resolve_inputs(str(corpus), exclude=[str(corpus / "more")]) == expected[:1]


def _val_share(manifest) -> float:
    tokens = {split: sum(s["tokens"] for s in shards) for split, shards in manifest["splits"].items()}
    return tokens["val"] / (tokens["train"] + tokens["val"])


def test_the_validation_split_of_non_latin_text_is_its_last_tenth(tmp_path):
    """The split is found in bytes; it is cut at the character those bytes end in (Russian: 2 bytes a letter)."""
    (tmp_path / "ru.txt").write_text("Съешь же ещё этих мягких французских булок, да выпей чаю.\n" * 3000)
    manifest = prepare(str(tmp_path / "ru.txt"), str(tmp_path / "out"), vocab="char", verbose=False)
    assert 0.09 < _val_share(manifest) < 0.11


def test_the_validation_split_stays_the_last_tenth_of_text_with_few_places_to_cut(tmp_path):
    """Characters are cut exactly there; GPT-2's BPE at most 1,024 characters earlier, where its tokenizer cannot
    join across, or else where the split falls, with a warning. (The split used to move back to the last such place
    however far: a DNA sequence after a one-line header gave 5 training tokens of 60,007.)"""
    import random

    random.seed(0)
    dna = ">seq1\n" + "".join(random.choice("ACGT") for _ in range(60_000)) + "\n"
    (tmp_path / "dna.txt").write_text(dna)
    chars = prepare(str(tmp_path / "dna.txt"), str(tmp_path / "c"), vocab="char", verbose=False)
    assert sum(s["tokens"] for s in chars["splits"]["val"]) == len(dna) - int(len(dna) * 0.9)
    (tmp_path / "skew.txt").write_text("word " * 50 + "x" * 20_000 + "\n")
    with pytest.warns(UserWarning, match=r"skew.txt: the split between train and val falls in a run that GPT-2's "
                                         r"tokenizer may join across, with no safe place to cut within 1,024 "
                                         r"characters before it \('x{20}'\)"):
        bpe = prepare(str(tmp_path / "skew.txt"), str(tmp_path / "b"), verbose=False)
    assert 0.05 < _val_share(bpe) < 0.15
    # Text with places to cut still splits at one: the ids are those of the whole text.
    (tmp_path / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 2000)
    prose = prepare(str(tmp_path / "prose.txt"), str(tmp_path / "p"), verbose=False)
    ids = [np.fromfile(tmp_path / "p" / s["file"], np.uint16).tolist()
           for split in ("train", "val") for s in prose["splits"][split]]
    assert sum(ids, [])[:-1] == GPT2Tokenizer().encode((tmp_path / "prose.txt").read_text())  # (then the separator)
    assert 0.09 < _val_share(prose) < 0.11


def test_a_gzip_of_several_members_is_split_by_its_whole_size(tmp_path):
    """`cat a.gz b.gz` (or pigz) writes several gzip members; the trailer holds only the last one's size."""
    import gzip

    parts = [("".join(f"line {i} of part {p}\n" for i in range(2000))).encode() for p in range(3)]
    (tmp_path / "joined.txt.gz").write_bytes(b"".join(gzip.compress(part) for part in parts))
    (tmp_path / "plain.txt").write_bytes(b"".join(parts))
    joined = prepare(str(tmp_path / "joined.txt.gz"), str(tmp_path / "a"), vocab="char", verbose=False)
    plain = prepare(str(tmp_path / "plain.txt"), str(tmp_path / "b"), vocab="char", verbose=False)
    assert joined["splits"]["val"][0]["tokens"] == plain["splits"]["val"][0]["tokens"]
    assert 0.09 < _val_share(joined) < 0.11


def test_a_file_named_twice_is_read_once(corpus, tmp_path):
    once = prepare(str(corpus), str(tmp_path / "once"), vocab="char", verbose=False)
    twice = prepare([str(corpus), str(corpus / "a.txt"), str(corpus / "**" / "*.txt")], str(tmp_path / "twice"),
                    vocab="char", verbose=False)
    tokens = lambda m: {k: sum(s["tokens"] for s in v) for k, v in m["splits"].items()}  # noqa: E731
    assert twice["sources"] == once["sources"] and tokens(twice) == tokens(once)


def test_files_are_read_in_the_order_named_so_the_last_named_is_held_out(tmp_path):
    """`prepare z.txt a.txt --val-fraction ...` held out the end of a.txt: the files were sorted by name."""
    (tmp_path / "z_train.txt").write_text("TRAIN" * 20)
    (tmp_path / "a_heldout.txt").write_text("HELD" * 20)
    named = [str(tmp_path / "z_train.txt"), str(tmp_path / "a_heldout.txt"), str(tmp_path / "*.txt")]
    assert resolve_inputs(named) == named[:2]  # the glob's files were named already: read once, where first named
    manifest = prepare(named, str(tmp_path / "ds"), val_fraction=0.4, vocab="char", verbose=False)
    held = TokenShards(str(tmp_path / "ds"), "val")
    assert {manifest["chars"][i] for i in held.window(0, len(held))} == set("HELD")
    assert [os.path.basename(s) for s in manifest["sources"]] == ["z_train.txt", "a_heldout.txt"]


def test_a_folder_gives_its_text_files_only(corpus, tmp_path):
    import gzip

    (corpus / "README.md").write_text("# notes about the data")
    (corpus / "table.csv").write_text("a,b\n1,2\n")
    (corpus / "more" / "c.txt.gz").write_bytes(gzip.compress(b"compressed text\n"))
    (corpus / "more" / "NOTES.TXT").write_text("upper-case suffix")
    (corpus / "more" / ".draft.txt").write_text("a hidden text")
    (corpus / ".git").mkdir()
    os.mkfifo(corpus / "pipe.txt")  # (it was said to be no .txt file)
    with pytest.warns(UserWarning) as warned:  # not skipped without a word
        assert resolve_inputs(str(corpus)) == [str(corpus / "a.txt"), str(corpus / "more" / "b.txt"),
                                               str(corpus / "more" / "c.txt.gz")]
    assert [str(w.message) for w in warned] == [
        f"{corpus} holds 3 file(s) that are not .txt or .txt.gz, not read: README.md, more/NOTES.TXT, table.csv",
        f"{corpus} holds 1 text name(s) of no regular file (a pipe, a socket or a device), not read: pipe.txt",
        f"{corpus} holds 2 hidden text file(s) or folder(s) (named with a leading dot), not read: .git, "
        "more/.draft.txt"]
    assert resolve_inputs(str(corpus / "README.md")) == [str(corpus / "README.md")]  # named files are read as named


def test_a_dataset_or_run_written_into_a_folder_of_texts_says_that_its_texts_are_read_no_more(corpus, tmp_path):
    """`prepare a.txt --out corpus` (a folder of texts, also nested ones) made it a dataset, which every later read of
    it skips, its texts with it: said. An output written again (a dataset, a run) says nothing."""
    from tf_gpt2.train_config import TrainConfig
    from tf_gpt2.training import train

    (corpus / "more" / "c.txt").write_text("more text\n")
    (corpus / "more" / "d.txt").write_text("more text\n")
    (tmp_path / "text.txt").write_text(TEXT)
    said = (rf"{corpus} holds texts \(a.txt, more/b.txt, more/c.txt, ...\): {{}} written there makes it an output "
            "folder, which a folder given as data skips, its texts with it")
    with pytest.warns(UserWarning, match=said.format("a dataset")):
        prepare(str(tmp_path / "text.txt"), str(corpus), vocab="char", verbose=False)
    with pytest.warns(UserWarning, match=r"holds 1 folder\(s\) of a dataset, .*, not read: texts"):  # as it said
        assert resolve_inputs(str(tmp_path)) == [str(tmp_path / "text.txt")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(str(tmp_path / "text.txt"), str(corpus), vocab="char", verbose=False)  # a dataset already
        (tmp_path / "models" / "gpt2").mkdir(parents=True)  # a folder of outputs: their .txt files are no texts
        for name in ("vocab.json", "merges.txt"):
            (tmp_path / "models" / "gpt2" / name).write_text("{}")
        prepare(str(tmp_path / "text.txt"), str(tmp_path / "models"), vocab="char", verbose=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("try a larger model\n")
    with pytest.warns(UserWarning, match=rf"{tmp_path}/notes holds texts \(todo.txt\): a training run written"):
        with pytest.raises(FileNotFoundError):  # (failed after the warning, before any training)
            train(TrainConfig(out=str(tmp_path / "notes"), data=str(tmp_path / "missing.txt")))
    # A checkpoint saved there (`tf-gpt2 convert`, `save_pretrained`) and an export too (they said nothing)
    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.export import export_saved_model

    model = GPT2(GPT2Config(vocab_size=3, n_positions=8, n_embd=8, n_layer=1, n_head=1, characters=["a", "b", "c"]))
    for what, save in (("a checkpoint", model.save_pretrained), ("an export", lambda out: export_saved_model(
            model, str(out), max_new_tokens_limit=2))):
        (tmp_path / what).mkdir()
        (tmp_path / what / "todo.txt").write_text("try a larger model\n")
        with pytest.warns(UserWarning, match=rf"{tmp_path / what} holds texts \(todo.txt\): {what} written there"):
            save(tmp_path / what)


def test_a_folder_follows_its_links_once_and_names_what_it_does_not_read(corpus, tmp_path):
    """Linked folders are read (each folder once, a link's loop too); a folder another program gave a manifest.json
    is read, a dataset or run of ours, or a checkpoint (its merges.txt is no text to learn), is skipped with a
    warning; a broken link named as text is an error."""
    from tf_gpt2 import GPT2, GPT2Config

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "linked.txt").write_text("text kept in another folder\n")
    os.symlink(tmp_path / "elsewhere", corpus / "linked")
    os.symlink(corpus, corpus / "more" / "loop")  # back up: every folder is read once
    (corpus / "notes").mkdir()
    (corpus / "notes" / "manifest.json").write_text('{"name": "my notes"}')  # another program's
    (corpus / "notes" / "n.txt").write_text("notes\n")
    prepare(str(tmp_path / "elsewhere"), str(corpus / "prepared"), vocab="char", verbose=False)  # ours
    GPT2(GPT2Config(vocab_size=50257, n_positions=8, n_embd=8, n_layer=1, n_head=1)).save_pretrained(corpus / "hf")
    (corpus / "tokenizer").mkdir()  # GPT-2's tokenizer files alone (its merges.txt was trained on)
    (corpus / "tokenizer" / "vocab.json").write_text('{"a": 0}')
    (corpus / "tokenizer" / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.warns(UserWarning) as warned:
        files = resolve_inputs(str(corpus))
    assert files == [str(corpus / "a.txt"), str(corpus / "linked" / "linked.txt"), str(corpus / "more" / "b.txt"),
                     str(corpus / "notes" / "n.txt")]
    assert [str(w.message) for w in warned] == [
        f"{corpus} holds 1 file(s) that are not .txt or .txt.gz, not read: notes/manifest.json",
        f"{corpus} holds 3 folder(s) of a dataset, a training run, a checkpoint or an export (not text), not read: "
        "hf, prepared, tokenizer"]
    assert resolve_inputs(str(corpus / "lin*")) == [str(corpus / "linked" / "linked.txt")]  # a glob's linked folder
    os.symlink(tmp_path / "unmounted" / "c.txt", corpus / "c.txt")
    for named in (corpus, corpus / "*.txt", corpus / "c.txt"):  # in a folder, matched by a glob, named
        with pytest.raises(FileNotFoundError, match=f"^{corpus / 'c.txt'} is a link to .*unmounted/c.txt, which is "
                                                    "not there$"):
            resolve_inputs(str(named))
    for value in ("[", "[" * 5000, '["splits"]', "7"):  # another program's manifest.json: a folder of text
        (corpus / "notes" / "manifest.json").write_text(value)
        assert not _is_output(str(corpus / "notes"))


def test_a_glob_that_names_no_suffix_says_which_files_of_other_names_it_reads(tmp_path):
    """`prepare 'notes/*'` read a LICENSE, a meta.json and a urls.csv beside the texts without a word (sorted last:
    the validation split); a folder skips them with a warning, a glob naming their suffix asked for them."""
    for name, text in (("a.txt", "text\n"), ("LICENSE", "MIT\n"), ("meta.json", "{}"), ("urls.csv", "id,url\n"),
                       ("n.md", "# notes\n")):
        (tmp_path / name).write_text(text)
    with pytest.warns(UserWarning) as warned:
        assert resolve_inputs(str(tmp_path / "*")) == [str(tmp_path / n) for n in
                                                        ("LICENSE", "a.txt", "meta.json", "n.md", "urls.csv")]
    assert [str(w.message) for w in warned] == [
        f"'{tmp_path}/*' names no suffix, and matches 4 file(s) not named .txt or .txt.gz, read as text: "
        f"{tmp_path}/LICENSE, {tmp_path}/meta.json, {tmp_path}/n.md, ... (a pattern such as '{tmp_path}/*.txt' "
        "leaves them out)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_inputs(str(tmp_path / "*.md")) == [str(tmp_path / "n.md")]  # asked for by their suffix
        assert resolve_inputs(str(tmp_path / "*.txt")) == [str(tmp_path / "a.txt")]


def test_a_stretch_of_zero_bytes_is_named_not_trained_on(tmp_path):
    """A text a crash or a failed copy left zero-filled in the middle (or at its end: the whole validation split)
    was read as NUL characters without a word; one stretch may straddle two of the reader's blocks."""
    import gzip

    from tf_gpt2.data import _blocks

    (tmp_path / "cut.txt").write_bytes(b"hello world\n" * 300 + b"\0" * 3000 + b"more text\n" * 300)
    with gzip.open(tmp_path / "cut.txt.gz", "wb") as f:
        f.write((tmp_path / "cut.txt").read_bytes())
    for name, where in (("cut.txt", ""), ("cut.txt.gz", " of its decompressed text")):
        with pytest.raises(ValueError, match=f"^{tmp_path / name} is not text at byte offset 3600{where} "
                                             "\\(line 301\\): a stretch of zero bytes"):
            prepare(str(tmp_path / name), str(tmp_path / "out"), vocab="char", verbose=False)
    assert not os.path.exists(tmp_path / "out")
    (tmp_path / "seam.txt").write_bytes(b"a\n" * 595 + b"\0" * 64 + b"b" * 50)  # bytes 1190-1253, past the start
    for block in (100, 16):  # across two blocks; across five, shorter than the stretch
        with pytest.raises(ValueError, match="at byte offset 1190 \\(line 596\\)"):
            list(_blocks(str(tmp_path / "seam.txt"), block))
    (tmp_path / "nuls.txt").write_bytes(b"a\n" * 45 + b"\0" * 63 + b"b" * 50)  # a shorter one is read as written
    assert "".join(_blocks(str(tmp_path / "nuls.txt"), 100)) == "a\n" * 45 + "\0" * 63 + "b" * 50
    for zeros in (b"\0" * 8192, b"hi\n" + b"\0" * 100):  # a file of zeros, or nearly (was: "reads as UTF-32LE")
        (tmp_path / "zeros.txt").write_bytes(zeros)
        with pytest.raises(ValueError, match=f"^{tmp_path / 'zeros.txt'} is not text at byte offset {zeros.index(0)} "
                                             "\\(line [12]\\): a stretch of zero bytes"):
            read_text(str(tmp_path / "zeros.txt"))


def test_a_file_of_token_ids_named_as_text_is_said_to_be_binary(tmp_path):
    """nanoGPT's train.bin (uint16 ids) read as UTF-16 without a mark, whose advice (iconv) made it nonsense text."""
    for named in ("train.bin", "val.BIN"):
        np.arange(65, dtype=np.uint16).tofile(tmp_path / named)
        with pytest.raises(ValueError, match=rf"{named} is not text: a .bin file of binary data \(token ids, such as "
                                             r"nanoGPT's train.bin, or weights\)"):
            prepare(str(tmp_path / named), str(tmp_path / "out"), verbose=False)
    (tmp_path / "notes.bin").write_text("text named .bin is read as text\n")
    assert read_text(str(tmp_path / "notes.bin")).startswith("text named")


def test_an_archive_or_another_compressor_is_named_as_what_it_is(tmp_path):
    """A tar (a stretch of zeros: "a file cut short by a crash ... copy it again"), a .gz of a .gz, zip, bzip2, xz
    and a PDF were refused naming a byte alone: the error names what the file is and what to do."""
    import bz2
    import gzip
    import io
    import lzma
    import tarfile
    import zipfile

    text = b"Some text, as it would be read.\n" * 40
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", text)
    files = {"a.tar.gz": (gzip.compress(archive.getvalue()), "a tar archive does: extract it"),
             "a.tar": (archive.getvalue(), "a tar archive does: extract it"),
             "twice.txt.gz": (gzip.compress(gzip.compress(text)), "gzip-compressed twice: decompress it once"),
             "a.zip": (zipped.getvalue(), "a zip archive does: extract it"),
             "a.txt.bz2": (bz2.compress(text), "bzip2-compressed data does: decompress it"),
             "a.txt.xz": (lzma.compress(text), "xz-compressed data does: decompress it"),
             "a.pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "a PDF does: extract its text first")}
    for name, (data, said) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"^{tmp_path / name} is not (UTF-8 )?text.*; it (starts as|is) .*"
                                             rf"{re.escape(said)}"):
            read_text(str(tmp_path / name))
    for start in (b"BZh is a sound.", b"%PDF- files", b"x" * 256 + b"ustard"):  # text that starts alike: no such hint
        (tmp_path / "latin1.txt").write_bytes(start + b" caf\xe9\n")
        with pytest.raises(ValueError, match=r"is not UTF-8 text: byte e9 at byte offset \d+ \(line 1\)$"):
            read_text(str(tmp_path / "latin1.txt"))


def test_a_gzip_file_named_as_plain_text_is_said_to_be_gzip(tmp_path):
    import gzip

    (tmp_path / "x.txt").write_bytes(gzip.compress(b"text\n"))
    with pytest.raises(ValueError, match=r"x.txt is not UTF-8 text: byte 8b at byte offset 1 \(line 1\); it starts "
                                         r"as gzip does: name it .txt.gz"):
        prepare(str(tmp_path / "x.txt"), str(tmp_path / "out"), verbose=False)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_text_is_refused_with_or_without_its_byte_order_mark(tmp_path, encoding):
    """Without a mark, UTF-16 is often valid UTF-8 (a NUL beside each ASCII character, 0x04 beside each Cyrillic
    letter, 0x20 0x19 for a curly apostrophe) and would train as such."""
    import gzip

    texts = {"english.txt": "First Citizen:\nIt’s before we proceed any further, hear me speak.\n",
             "russian.txt": "Первый гражданин:\nПрежде чем идти дальше, выслушайте меня.\n",
             "hindi.txt": "नमस्ते दुनिया\n" * 3,  # 0x09, a tab, beside each letter
             "quotes.txt": "“Hi”, ‘there’ — 你好\n" * 3,  # 0x1c, 0x1d, 0x18, 0x19, 0x14 among the low bytes
             "nospace.txt": "ЗдравствуйПривет" * 60}  # no NUL at all: 0x04 beside each letter
    for name, text in texts.items():
        assert text.encode(encoding).decode("utf-8")  # (valid UTF-8 indeed)
        (tmp_path / name).write_bytes(text.encode(encoding))
    (tmp_path / "english.txt.gz").write_bytes(gzip.compress(texts["english.txt"].encode(encoding)))
    (tmp_path / "marked.txt").write_bytes(texts["english.txt"].encode("utf-16"))
    for name in [*texts, "english.txt.gz"]:
        with pytest.raises(ValueError, match=rf"{name} is not UTF-8 text: its start reads as "
                                             rf"{encoding.replace('16-', '16').upper()} without a byte-order mark .*"
                                             rf"iconv -f {encoding.replace('16-', '16')} -t utf-8"):
            prepare(str(tmp_path / name), str(tmp_path / "out"), verbose=False)
    for text in texts.values():  # as UTF-8 they are read
        (tmp_path / "utf8.txt").write_text(text, encoding="utf-8")
        assert read_text(str(tmp_path / "utf8.txt")) == text
    with pytest.raises(ValueError, match=r"marked.txt is not UTF-8 text: byte f[ef] at byte offset 0 \(line 1\); it "
                                         "starts with UTF-16's byte-order mark: save it as UTF-8"):
        prepare(str(tmp_path / "marked.txt"), str(tmp_path / "out"), verbose=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    (tmp_path / "nuls.txt").write_bytes(b"a\0b\0\0\0 text with NULs in it\n")  # NULs, but not every other byte
    (tmp_path / "short.txt").write_bytes(b"a\0b\n")  # one NUL
    (tmp_path / "controls.txt").write_bytes(b"a\x04b\x04" + b"plain text with a control or two\x1f\n" * 20)
    assert read_text(str(tmp_path / "controls.txt")).startswith("a\x04b")
    (tmp_path / "columns.txt").write_bytes(b"a\tb\tc\td\t" * 50)  # a tab in every other place: text
    assert read_text(str(tmp_path / "columns.txt")).startswith("a\tb")
    assert read_text(str(tmp_path / "short.txt")) == "a\0b\n"
    prepare(str(tmp_path / "nuls.txt"), str(tmp_path / "out"), verbose=False)
    assert read_text(str(tmp_path / "nuls.txt")).startswith("a\0b\0\0\0 text")
    for stray in (b"hello\0world\0 and some ordinary text follows here, many words of it.\n",  # two NULs, both odd
                  b"id\x001\x002\x00name\n" + b"ordinary text " * 60):  # three, two places apart
        (tmp_path / "stray.txt").write_bytes(stray)  # (was "UTF-16 ... a NUL in every other place": iconv garbled it)
        assert read_text(str(tmp_path / "stray.txt")) == stray.decode()
    (tmp_path / "tiny.txt").write_bytes("hi\n".encode(encoding))  # three characters of UTF-16: still said
    with pytest.raises(ValueError, match="tiny.txt is not UTF-8 text: its start reads as UTF-16"):
        read_text(str(tmp_path / "tiny.txt"))


@pytest.mark.parametrize("encoding", ["utf-32-le", "utf-32-be", "utf-32"])
def test_utf32_text_is_refused_with_or_without_its_byte_order_mark(tmp_path, encoding):
    """Without a mark, UTF-32 of Cyrillic, Greek or CJK text is valid UTF-8 (NULs and control bytes)."""
    text = "Первый гражданин:\nПрежде чем идти дальше. 你好世界\n" * 3
    if encoding != "utf-32":
        assert text.encode(encoding).decode("utf-8")  # (valid UTF-8 indeed)
    (tmp_path / "russian.txt").write_bytes(text.encode(encoding))
    codec = "utf-32be" if encoding == "utf-32-be" else "utf-32le"  # (the marked one: this machine's order)
    iconv = "utf-32" if encoding == "utf-32" else codec  # (which drops a mark; an explicit order keeps it as text)
    with pytest.raises(ValueError, match=rf"russian.txt is not UTF-8 text: its start reads as {codec.upper()} \(NULs "
                                         rf"in two of every four bytes\): save it as UTF-8 \(iconv -f {iconv} "):
        prepare(str(tmp_path / "russian.txt"), str(tmp_path / "out"), verbose=False)
    import gzip

    (tmp_path / "russian.txt.gz").write_bytes(gzip.compress(text.encode(encoding)))  # converted decompressed
    with pytest.raises(ValueError, match=rf"russian.txt.gz is not UTF-8 text: .* \(zcat FILE \| iconv -f {iconv} -t "
                                         r"utf-8 \| gzip\)"):
        prepare(str(tmp_path / "russian.txt.gz"), str(tmp_path / "out"), verbose=False)


# Every place GPT-2's pre-tokenizer may join across: whitespace runs before indentation and words (their last space
# joins the word), blank lines, tabs, CRLF, contractions, letter/digit/symbol runs, CJK without spaces, a long run of
# one symbol, `<|endoftext|>` (one token), control characters Python counts as space and GPT-2 does not, and a long
# stretch without whitespace, where only the places between letters, digits and other symbols may be cut.
TRICKY = ("def f(x):\n\n    return x  \n\t\tpass\r\n\r\n   \n"
          "x's-y'LLz've12'34'd'm't'Re''s'q<|endoftext|>ab12<|endoftext|>!!<|endoftext|>中文。ok!!\x1c\x1d!!a\x1cb!\x85c\u2028"
          "It's 'll they'll ''s x'LL 12ab34!!?? 2.5e-3 \u00a0\u00a0 nbsp\u2003em\n"
          "中文没有空格，汉字一二三。ok123 Привет,мир   \x0b\x0c\x1c\x1f end"
          "<|endoftext|>  after <|endoftext|>\n\n\n" + "=" * 40 + "  \n")


def _whole_file_ids(path) -> list[int]:
    import gzip

    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return GPT2Tokenizer().encode(data.decode("utf-8"))


def test_prepare_gives_the_ids_of_the_whole_file_wherever_its_chunks_end(tmp_path):
    """tiktoken on the whole file, with chunk edges at every place of the text (chunks of 1 to 48 bytes), for
    plain, gzip and CRLF text, with the validation split falling anywhere."""
    import gzip

    from tf_gpt2.data import _chunks

    tok = GPT2Tokenizer()
    text = TRICKY * 2 + TRICKY.replace("\n", "\r\n")
    (tmp_path / "t.txt").write_text(text, newline="")
    expected = _whole_file_ids(tmp_path / "t.txt")
    for chunk_bytes in range(1, 49):
        chunks = list(_chunks(str(tmp_path / "t.txt"), chunk_bytes))
        assert "".join(chunks) == text
        assert [i for chunk in chunks for i in tok.encode(chunk)] == expected, chunk_bytes
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(text.encode()))
    for path, chunk_bytes, val_fraction in ((tmp_path / "t.txt", 7, 0.0), (tmp_path / "t.txt.gz", 16, 0.3),
                                            (tmp_path / "t.txt", 5, 0.55)):
        out = tmp_path / f"out{chunk_bytes}"
        prepare(str(path), str(out), val_fraction=val_fraction, chunk_bytes=chunk_bytes, verbose=False)
        ids = [i for split in ("train", "val") if len(s := TokenShards(str(out), split)) for i in s.window(0, len(s))]
        assert ids == expected + [tok.eot_id], (path, chunk_bytes)


def test_prepare_reads_a_file_without_line_breaks_in_bounded_chunks(tmp_path):
    """A single line is read a chunk at a time, not whole; a run with nowhere safe to cut is cut once it is
    `LONGEST_RUN` long, with a warning naming the file and where."""
    from tf_gpt2.data import LONGEST_RUN, _chunks

    line = " ".join(f"word{i}, x" for i in range(400))
    (tmp_path / "line.txt").write_text(line)
    chunks = list(_chunks(str(tmp_path / "line.txt"), 64))
    assert "".join(chunks) == line and max(map(len, chunks)) <= 128
    run = "start " + "a" * (LONGEST_RUN + 100) + " end"
    (tmp_path / "run.txt").write_text(run)
    with pytest.warns(UserWarning, match=r"run.txt: the 65,\d{3} characters from byte offset 5 on are one run"):
        chunks = list(_chunks(str(tmp_path / "run.txt"), 64))
    assert "".join(chunks) == run and max(map(len, chunks)) < LONGEST_RUN + 64
    tok = GPT2Tokenizer()
    for text in ("a" * LONGEST_RUN,  # a run that reaches the limit at the file's end: no cut, no warning (one was said)
                 "<|endoftext|>" * (LONGEST_RUN // 13 + 100)):  # special tokens: cut between two (one was cut inside)
        (tmp_path / "end.txt").write_text(text)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            chunks = list(_chunks(str(tmp_path / "end.txt"), 1024))
        assert [i for chunk in chunks for i in tok.encode(chunk)] == tok.encode(text)


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 1 << 20])
def test_text_that_is_not_utf8_is_named_by_its_byte_offset_and_line(tmp_path, chunk_bytes):
    """The offset is the file's, wherever the decoder's buffer starts (a cut multi-byte character before it too)."""
    head = ("line é\n" * 500).encode()  # 8 bytes a line
    (tmp_path / "bad.txt").write_bytes(head + b"ok \xff rest\n")
    with pytest.raises(ValueError, match=r"bad.txt is not UTF-8 text: byte ff at byte offset 4003 \(line 501\)"):
        prepare(str(tmp_path / "bad.txt"), str(tmp_path / "o"), chunk_bytes=chunk_bytes, verbose=False)
    import gzip

    (tmp_path / "bad.txt.gz").write_bytes(gzip.compress(head + b"ok \xff rest\n"))
    with pytest.raises(ValueError, match=r"bad.txt.gz is not UTF-8 text: byte ff at byte offset 4003 of its "
                                         r"decompressed text \(line 501\)"):
        prepare(str(tmp_path / "bad.txt.gz"), str(tmp_path / "o"), chunk_bytes=chunk_bytes, verbose=False)


def test_a_prepare_error_starts_on_a_line_of_its_own(corpus, tmp_path, capsys):
    """The progress bar ends its line before the error is printed."""
    (tmp_path / "z.txt").write_bytes(b"caf\xe9\n")
    assert cli_main(["prepare", str(corpus / "a.txt"), str(tmp_path / "z.txt"), "--out", str(tmp_path / "o")]) == 2
    out, err = capsys.readouterr()
    assert "byte" in out and out.endswith("\n")
    assert err.startswith("tf-gpt2 prepare: error: ") and "z.txt is not UTF-8 text: byte e9 at byte offset 3" in err


def test_a_dataset_being_written_is_not_written_into_by_a_second_prepare(tmp_path):
    """Two `prepare`s into one folder would interleave their shards: the second is refused while the first holds
    the folder (an OS file lock, which flock keeps apart even within one process), and writes nothing."""
    from tf_gpt2.files import exclusive

    (tmp_path / "a.txt").write_text("To be, or not to be: that is the question.\n" * 20, encoding="utf-8")
    with exclusive(str(tmp_path / "out"), "prepare"):
        with pytest.raises(RuntimeError, match=rf"{tmp_path}/out is in use by another prepare \(pid {os.getpid()}\)"):
            prepare(str(tmp_path / "a.txt"), str(tmp_path / "out"), vocab="char", verbose=False)
        assert os.listdir(tmp_path / "out") == [".lock"]
    assert prepare(str(tmp_path / "a.txt"), str(tmp_path / "out"), vocab="char", verbose=False)["splits"]["train"]


def test_prepare_into_a_training_runs_own_dataset_is_refused(tmp_path, capsys):
    """`tf-gpt2 prepare other.txt --out RUN/data` replaced the dataset a run made of its texts (while it trained,
    too): its resume was then refused as the texts "added" and "gone", of files it never read."""
    (tmp_path / "a.txt").write_text("To be, or not to be: that is the question.\n" * 20, encoding="utf-8")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"settings": {"data": str(tmp_path / "a.txt")}}))
    prepare(str(tmp_path / "a.txt"), str(tmp_path / "run" / "data"), vocab="char", verbose=False)  # as train makes it
    made = (tmp_path / "run" / "data" / "manifest.json").read_bytes()
    for out in ("run/data", "run/data/", "run/./data"):
        assert cli_main(["prepare", str(tmp_path / "a.txt"), "--out", str(tmp_path / out), "--vocab", "char"]) == 2
        assert (f"error: {tmp_path / out} is the dataset the training run in {tmp_path / 'run'} made of its texts"
                in capsys.readouterr().err)
    assert (tmp_path / "run" / "data" / "manifest.json").read_bytes() == made
    assert cli_main(["prepare", str(tmp_path / "a.txt"), "--out", str(tmp_path / "run2" / "data")]) == 0  # no run


def test_a_pipe_is_refused_as_no_file(tmp_path):
    """A named pipe (`<(zcat ...)`, mkfifo) was "no data file matches", of a path that is there; the dataset reads each
    text twice, which a pipe cannot give."""
    os.mkfifo(tmp_path / "stream.txt")
    with pytest.raises(ValueError, match=r"stream.txt, a pipe or a device, is no file: a dataset reads each text "
                                         r"twice .* write the text to a file first"):
        prepare(str(tmp_path / "stream.txt"), str(tmp_path / "out"), vocab="char", verbose=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "text.txt").write_text("a text beside the pipe\n")  # a glob reads what it matches as named
    with pytest.raises(ValueError, match=r"stream.txt \(matched by '.*/\*.txt'\), a pipe or a device, is no file"):
        prepare(str(tmp_path / "*.txt"), str(tmp_path / "out"), vocab="char", verbose=False)
    assert not (tmp_path / "out").exists()


def test_a_text_read_twice_under_two_names_is_said(tmp_path):
    """A copy kept in an old/ folder, or gzipped beside its .txt: both are read (the text counts twice, the validation
    split may repeat training text), and the warning names the copy and its original; distinct texts say nothing."""
    import gzip
    import warnings

    (tmp_path / "texts" / "old").mkdir(parents=True)
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 5
    for path in ("texts/a.txt", "texts/old/a.txt"):
        (tmp_path / path).write_text(text)
    (tmp_path / "texts" / "b.txt").write_text("All:\nSpeak, speak.\n" * 5)
    with pytest.warns(UserWarning, match=rf"1 file\(s\) hold the same text as another, and both are read .*: "
                                         rf"{tmp_path}/texts/old/a.txt \(of {tmp_path}/texts/a.txt\)$"):
        manifest = prepare(str(tmp_path / "texts"), str(tmp_path / "out"), vocab="char", verbose=False)
    assert len(manifest["sources"]) == 3
    (tmp_path / "texts" / "old" / "a.txt").write_text("Second Citizen:\nOne word, good citizens.\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(str(tmp_path / "texts"), str(tmp_path / "out"), vocab="char", verbose=False)
    (tmp_path / "texts" / "old" / "a.txt.gz").write_bytes(gzip.compress(text.encode()))
    with pytest.warns(UserWarning, match=rf"1 file\(s\) hold the same text .*: "
                                         rf"{tmp_path}/texts/old/a.txt.gz \(of {tmp_path}/texts/a.txt\)$"):
        prepare(str(tmp_path / "texts"), str(tmp_path / "out"), vocab="char", verbose=False)


def test_a_utf8_byte_order_mark_is_read_as_written_and_said_once(tmp_path):
    """Windows Notepad's UTF-8 mark: kept as tiktoken reads it (a character before the text), but said, once per
    run of prepare (both of prepare's reads of a character vocabulary said it), and by eval's read."""
    import gzip

    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfHello from Notepad\r\n" * 5)
    (tmp_path / "plain.txt.gz").write_bytes(gzip.compress(b"no mark here\n" * 5))
    with pytest.warns(UserWarning) as warned:
        manifest = prepare(str(tmp_path), str(tmp_path / "out"), vocab="char", verbose=False)
    said = [str(w.message) for w in warned if "byte-order mark" in str(w.message)]
    assert said == [f"{tmp_path / 'bom.txt'} start(s) with UTF-8's byte-order mark (U+FEFF, as Windows Notepad writes "
                    "it): read as written, a character before the text (remove it to leave it out)"]
    assert "\ufeff" in manifest["chars"]
    with pytest.warns(UserWarning, match="bom.txt start\\(s\\) with UTF-8's byte-order mark"):
        assert read_text(str(tmp_path / "bom.txt")).startswith("\ufeffHello")
