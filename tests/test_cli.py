"""Every CLI failure ends in one line that names the problem (and the file), with exit status 2."""

import json
import os
import re
import subprocess
import sys

import pytest

from tf_gpt2.cli import main as cli_main


@pytest.fixture
def files(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "fake.txt.gz").write_bytes(b"abc")
    (tmp_path / "fake.keras").write_text("not a zip")
    (tmp_path / "text.txt").write_text("hello world\n" * 20)
    (tmp_path / "folder").mkdir()
    os.symlink(tmp_path / "nowhere" / "data", tmp_path / "dangling")  # a link to a folder not (yet) made
    (tmp_path / "dataset").mkdir()  # a prepared dataset and a run's folder: no output of another kind goes in them
    (tmp_path / "dataset" / "manifest.json").write_text(json.dumps({"splits": {}}))
    (tmp_path / "arun").mkdir()
    (tmp_path / "arun" / "run.json").write_text(json.dumps({"settings": {}}))
    (tmp_path / "done").mkdir()  # a finished run whose checkpoint was removed
    (tmp_path / "done" / "model.keras").write_text("its model")
    (tmp_path / "unmounted").mkdir()  # a run whose checkpoint is a link to a disk not mounted (taken for none:
    os.symlink(tmp_path / "disk" / "checkpoint.npz", tmp_path / "unmounted" / "checkpoint.npz")  # started over)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"vocab_size": 5}))
    (tmp_path / "typed").mkdir()
    (tmp_path / "typed" / "config.json").write_text(json.dumps(
        {"vocab_size": 5, "n_embd": "16", "n_layer": 1, "n_head": 2, "n_positions": 8}))
    return tmp_path


EXPORT_TINY = ["export", "--random-init", "gpt2-tiny"]
CASES = [
    (["prepare", "{d}/latin1.txt", "--out", "{d}/p"], "latin1.txt is not UTF-8 text"),
    (["prepare", "{d}/fake.txt.gz", "--out", "{d}/p"], "fake.txt.gz is not a gzip file"),
    (["prepare", "-", "--out", "{d}/p"], "standard input ('-') is no file: a dataset reads each text twice"),
    (["prepare", "{d}/text.txt", "--out", "{d}/p", "--vocab", "char", "--val-fraction", "0.999"],
     "no training tokens came out of ['{d}/text.txt']: all 240 went to the validation split"),
    (["train", "--data", "{d}/latin1.txt", "--out", "{d}/run"], "latin1.txt is not UTF-8 text"),
    (["generate", "hi", "--model", "{d}/fake.keras"], "fake.keras is not a readable .keras file"),
    (["generate", "hi", "--model", "{d}/hf"], "hf/config.json lacks n_embd, n_layer, n_head"),
    (["convert", "{d}/typed", "{d}/out.keras"], "typed/config.json: GPT2Config.n_embd must be a positive integer"),
    (["generate", "hi", "--random-init", "gpt2-tiny", "--seed", "99999999999", "--temperature", "1"],
     "--seed must be in [0, 2**31)"),
    (["generate", "hi", "--random-init", "gpt2-tiny", "--seed", "7"],  # greedy: the seed would change nothing
     "--seed sets the sampling noise, and --temperature 0 (greedy, the default) samples nothing"),
    # Settings refused before the model is read (the model here could not be), and without the note of the seed
    # drawn for a run that wrote nothing.
    (["generate", "hi", "--model", "{d}/fake.keras", "--temperature", "1", "--top-p", "0"],
     "--top-p must be in (0, 1], got 0.0"),
    (["generate", "hi", "--model", "{d}/fake.keras", "--top-k", "5"],  # named as the flags, not generate's settings
     "--top-k=5 filters what is sampled, and --temperature 0 samples nothing (greedy): give a --temperature > 0"),
    (["generate", "hi", "--model", "{d}/fake.keras", "--max-new-tokens", "0"],
     "--max-new-tokens must be a positive integer, got 0"),
    (["generate", "hi", "--random-init", "gpt2-tiny", "--temperature", "1", "--max-new-tokens", "5000"],
     "exceeds the context of"),
    # Two models named, or a flag of the other one: refused, not one of them ignored.
    (["eval", "{d}/text.txt", "--model", "{d}/hf", "--random-init", "gpt2-tiny"],
     "--model and --random-init name two models ({d}/hf, an untrained gpt2-tiny): give one"),
    (["generate", "hi", "--random-init", "gpt2-tiny", "--revision", "main"],
     "--revision is for a Hugging Face repo name given as --model, not --random-init"),
    (["eval", "{d}/folder", "--random-init", "gpt2-tiny"], "Is a directory: {d}/folder"),
    (["eval", "{d}/text.txt", "--random-init", "gpt2-tiny", "--stride", "0"], "--stride must be >= 1, got 0"),
    (["export", "--random-init", "gpt2-tiny", "--format", "tflite", "--out", "{d}/folder", "--cache-length", "16"],
     "{d}/folder is a folder: name the .tflite file to write"),
    (["export", "--random-init", "gpt2-tiny", "--out", "{d}/text.txt/m"],
     "Not a directory (a file, where a folder to write in would be): {d}/text.txt"),
    (["train", "--out", "{d}/run", "--eval-interval", "0"], "eval_interval must be a positive integer"),
    (["train", "--out", "{d}/run", "--sample-tokens", "-2"], "sample_tokens must be a non-negative integer, got -2"),
    # (TensorFlow failed on them naming no flag: "Python int too large to convert to C long", after writing logs/)
    (["train", "--out", "{d}/run", "--grad-accum", "99999999999999999999"],
     "grad_accum must be at most 2**31 - 1, got 99999999999999999999"),
    (["train", "--out", "{d}/run", "--steps", "2147483648"], "steps must be at most 2**31 - 1, got 2147483648"),
    (["train", "--out", "{d}/run", "--weight-decay", "1e30"],  # (NaN, and advice to lower --grad-clip)
     "learning_rate x weight_decay is 6e+26: AdamW multiplies each decayed weight by 1 - learning_rate x "
     "weight_decay at every step, which at 1 or more zeroes or flips it; lower learning_rate or weight_decay"),
    (["train", "--out", "{d}/run", "--sample-tokens", "0", "--sample-prompt", "Once"],
     "sample_prompt 'Once' would not be used: sample_tokens is 0 (no samples)"),
    (["train", "--out", "{d}/run", "--strategy", "mirrored", "--sample-prompt", "Once"],
     "sample_prompt 'Once' would not be used: a run under strategy mirrored makes no samples"),
    (["train", "--out", "{d}/run", "--strategy", "mirrored", "--sample-tokens", "8"],  # (no sample and no word)
     "sample_tokens 8 would not be used: a run under strategy mirrored makes no samples"),
    (["train", "--out", "{d}/run", "--learning-rate", "3e-5", "--min-learning-rate", "6e-5"],
     "the cosine schedule would rise"),
    (["train", "--out", "{d}/run", "--init-from", "{d}/hf", "--preset", "gpt2-medium"],  # (the preset was ignored)
     "--preset sizes a new model; --init-from {d}/hf has its own size: drop --preset"),
    # An output that is one of the command's inputs is refused before anything is read or written.
    (["export", "--model", "{d}/fake.keras", "--format", "tflite", "--out", "{d}/fake.keras"],
     "the output {d}/fake.keras is the input {d}/fake.keras"),
    (["export", "--model", "{d}/hf", "--out", "{d}/hf"], "the output {d}/hf is the input {d}/hf: writing there would "
                                                         "replace the input or mix the output's files with it"),
    (["convert", "{d}/hf", "{d}/hf/"], "the output {d}/hf/ is the input {d}/hf"),
    (["prepare", "{d}/text.txt", "--out", "{d}/text.txt"], "the output {d}/text.txt is the input"),
    (["prepare", "{d}/text.txt", "--out", "{d}"],  # (the folder of texts became a dataset, skipped from then on)
     "{d} holds {d}/text.txt, a text it would read: a dataset written there makes that folder a dataset"),
    (["prepare", "{d}/text.txt", "--out", "{d}/dangling"],  # (makedirs' bare "File exists")
     "error: {d}/dangling is a link to {d}/nowhere/data, which is not there (prepare writes into the folder a link "
     "leads to"),
    (["prepare", "{d}/text.txt", "--out", "{d}/latin1.txt"],
     "Not a directory (prepare writes a folder there): {d}/latin1.txt"),
    (["train", "--data", "{d}/folder", "--out", "{d}/folder"], "the output {d}/folder is the input"),
    (["train", "--init-from", "{d}/done/model.keras", "--out", "{d}/done"],  # (the run wrote over its input)
     "the output {d}/done/model.keras is the input {d}/done/model.keras"),
    (["train", "--out", "{d}/done"],  # (a new run replaced the model without a word)
     "{d}/done holds model.keras of an earlier run, and no checkpoint.npz to resume it from"),
    (["train", "--data", "{d}/text.txt", "--out", "{d}/unmounted"],
     "{d}/unmounted/checkpoint.npz is a link to {d}/disk/checkpoint.npz, which is not there (a run reads and writes "
     "the file it leads to: make it there, or remove the link)"),
    (["convert", "{d}/hf", "{d}/fake.keras"],  # (not a Keras archive: it was replaced, said after)
     "{d}/fake.keras is a file but no .keras file: writing there would replace it"),
    (["convert", "{d}/hf", "{d}/dataset"],  # (prepare then refused the dataset it made as an export's folder)
     "{d}/dataset is the folder of a prepared dataset: a Hugging Face checkpoint written there would mix its files "
     "with those; give it a folder of its own"),
    (["convert", "{d}/hf", "{d}/arun"], "{d}/arun is the folder of a training run: a Hugging Face checkpoint"),
    (["train", "--out", "{d}/dataset"], "{d}/dataset is the folder of a prepared dataset: a training run written "
                                        "there would mix its files with those"),
    ([*EXPORT_TINY, "--out", "{d}/arun"], "{d}/arun is the folder of a training run: a SavedModel written there"),
    (["convert", "{d}/hf", "{d}/OUT.KERAS"], "{d}/OUT.KERAS names a .KERAS file, but convert writes a .keras file"),
    (["convert", "{d}/hf", "{d}/model.safetensors"], "names a .safetensors file, but convert writes a .keras file"),
    (["convert", "{d}/hf", "{d}/out.keras/"], "{d}/out.keras/ ends in /, a folder's mark, but a .keras name"),
    ([*EXPORT_TINY, "--out", "{d}/m.litertlm/"],
     "--out {d}/m.litertlm/ ends in /, a folder's mark, but --format litertlm writes a file"),
    (["convert", "{d}/missing", "{d}/latin1.txt"],
     "Not a directory (a Hugging Face checkpoint is a folder; a .keras DST is a file): {d}/latin1.txt"),
    (["train", "--data", "{d}/text.txt", "--out", "{d}/seeded", "--seed", "-1"],  # (before the text is tokenized)
     "seed must be an integer in [0, 2**32), got -1"),
    (["export", "--random-init", "gpt2-tiny", "--out", "{d}/sm", "--version", "0"],
     "--version must be a positive integer, got 0"),  # (named as the setting, not the flag)
    ([*EXPORT_TINY, "--format", "tflite", "--out", "{d}/m.tflite", "--cache-length", "0"],
     "--cache-length must be an integer in [1, "),
    ([*EXPORT_TINY, "--out", "{d}/sm", "--max-word-bytes", "0"], "--max-word-bytes must be a positive integer, got 0"),
    ([*EXPORT_TINY, "--format", "tflite", "--out", "{d}/m.tflite", "--max-text-bytes", "9000"],
     "--max-text-bytes is for --format saved_model, not --format tflite"),
    # A flag of the other format is refused, not ignored; so is an out path named for another format, and a limit
    # past the context. Without --format, --out's suffix names it (here .tflite: --version is refused for it).
    ([*EXPORT_TINY, "--out", "{d}/sm", "--quantize", "int8"],
     "--quantize is for on-device files (tflite, litertlm), not --format saved_model"),
    ([*EXPORT_TINY, "--out", "{d}/sm", "--cache-length", "64"],
     "--cache-length is for on-device files (tflite, litertlm), not --format saved_model"),
    ([*EXPORT_TINY, "--format", "tflite", "--out", "{d}/m.tflite", "--dtype", "bfloat16"],
     "--dtype is for --format saved_model, not --format tflite"),
    ([*EXPORT_TINY, "--out", "{d}/m.tflite", "--version", "3"],
     "--version is for --format saved_model, not --format tflite"),
    ([*EXPORT_TINY, "--out", "{d}/m.litertlm", "--xla"], "--xla is for --format saved_model, not --format litertlm"),
    ([*EXPORT_TINY, "--out", "{d}/m.tflite", "--max-new-tokens-limit", "8"],
     "--max-new-tokens-limit is for --format saved_model, not --format tflite"),
    ([*EXPORT_TINY, "--format", "tflite", "--out", "{d}/m.litertlm"],
     "--out {d}/m.litertlm names a LiteRT-LM package (.litertlm), but --format tflite writes a plain LiteRT model"),
    ([*EXPORT_TINY, "--out", "{d}/m.keras"],  # (a SavedModel folder was made under that name)
     "--out {d}/m.keras names a .keras file, but --format saved_model writes a folder (its version inside): give a "
     "folder's name (a .keras file: tf-gpt2 convert)"),
    ([*EXPORT_TINY, "--out", "{d}/m.LiteRTLM", "--format", "saved_model"],
     "but --format saved_model writes a SavedModel folder"),
    ([*EXPORT_TINY, "--out", "{d}/sm", "--max-new-tokens-limit", "500"],
     "--max-new-tokens-limit 500 exceeds the model's context of 128 positions"),
]


@pytest.mark.parametrize("command, message", CASES, ids=[" ".join(c[:2]) + f" [{i}]" for i, (c, _) in enumerate(CASES)])
def test_failures_end_in_one_line_naming_the_problem(files, capsys, command, message):
    command = [part.format(d=files) for part in command]
    assert cli_main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # the whole of stderr: one line, no traceback, no warnings
    assert err[0].startswith(f"tf-gpt2 {command[0]}: error: ") and message.format(d=files) in err[0]


def test_tf_gpt2_traceback_adds_the_traceback_after_the_line(files, capsys, monkeypatch):
    monkeypatch.setenv("TF_GPT2_TRACEBACK", "1")
    assert cli_main(["generate", "hi", "--model", str(files / "fake.keras")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("tf-gpt2 generate: error: ") and err[1] == "Traceback (most recent call last):", err
    assert "is not a readable .keras file" in err[-1]


def test_exit_status_is_2_on_an_error_or_a_bad_flag_and_130_on_ctrl_c(capsys):
    """The statuses docs/cli.md gives (0 on success: every other test of a command)."""
    import argparse

    from tf_gpt2.cli import run

    def interrupted(args):
        raise KeyboardInterrupt

    assert run(argparse.Namespace(command="train", run=interrupted)) == 130
    assert capsys.readouterr().err == "tf-gpt2 train: interrupted\n"
    with pytest.raises(SystemExit) as bad_flag:
        cli_main(["train", "--out", "x", "--no-such-flag"])
    assert bad_flag.value.code == 2 and "give it after --" not in capsys.readouterr().err  # (a flag: no hint)
    with pytest.raises(SystemExit):
        cli_main(["eval", "f.txt", "--json=yes"])
    assert "give it after --" not in capsys.readouterr().err
    for prompt in ("-hello", "-x"):  # a prompt read as flags ("argument -h/--help: ignored explicit argument 'ello'")
        with pytest.raises(SystemExit):
            cli_main(["generate", "--random-init", "gpt2-tiny", prompt])
        assert f"(if {prompt} is a prompt or a path, give it after --: ... -- {prompt})" in capsys.readouterr().err


def test_a_failure_during_a_progress_bar_starts_a_line_of_its_own(capsys):
    """Keras' progress bar leaves its line open (each update starts with the line break): standard output gets the
    line's end before the failure is said, so that in a terminal or a log of both streams it is a line of its own.
    A command whose output ended its line gets no blank line."""
    import argparse

    import keras

    from tf_gpt2.cli import run

    def fails_mid_round(args):
        keras.utils.Progbar(4).update(1)
        raise ValueError("a shard is damaged")

    def fails_after_a_line(args):
        print("a whole line")
        raise KeyboardInterrupt

    assert run(argparse.Namespace(command="train", run=fails_mid_round)) == 2
    out, err = capsys.readouterr()
    assert "1/4" in out.splitlines()[-1] and out.endswith("\n") and err == "tf-gpt2 train: error: a shard is damaged\n"
    assert run(argparse.Namespace(command="train", run=fails_after_a_line)) == 130
    assert capsys.readouterr().out == "a whole line\n"


def test_help_shows_the_defaults_of_train_config_and_the_presets(capsys):
    from tf_gpt2.config import PRESETS
    from tf_gpt2.training import TrainConfig

    with pytest.raises(SystemExit) as done:
        cli_main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0
    defaults = TrainConfig()
    for flag, value in (("steps", defaults.steps), ("batch-size", defaults.batch_size),
                        ("learning-rate", defaults.learning_rate), ("eval-interval", defaults.eval_interval)):
        assert f"(default: {value})" in shown.split(f"--{flag} ", 2)[-1].split("--")[0], flag
    assert "{" + ",".join(sorted(PRESETS)) + "}" in shown


def test_help_never_shows_a_default_that_its_layout_would_change():
    """Help text is wrapped, so a default with a line break or runs of spaces is shown changed ('ROMEO:\\n' was
    shown as 'ROMEO: '): such a default is spelled out in the flag's own help instead."""
    from tf_gpt2.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.choices)
    for name, command in commands.choices.items():
        for action in command._actions:
            if isinstance(action.default, str) and " ".join(action.default.split()) != action.default:
                assert "default" in action.help, (name, action.dest)


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_export_hands_the_served_text_limits_to_the_saved_model(tmp_path, capsys, monkeypatch):
    """`--max-text-bytes` and `--max-word-bytes`: `export_saved_model` took them, the command did not, and a prompt that
    fit the context (a 300-byte run of dashes, 8,910 bytes of 550 tokens) could not be served."""
    taken = {}
    monkeypatch.setattr("tf_gpt2.export.export_saved_model", lambda model, out, **settings: taken.update(settings))
    assert cli_main([*EXPORT_TINY, "--out", str(tmp_path / "sm"), "--max-text-bytes", "20000",
                     "--max-word-bytes", "512"]) == 0
    assert (taken["max_text_bytes"], taken["max_word_bytes"]) == (20000, 512)
    taken.clear()
    assert cli_main([*EXPORT_TINY, "--out", str(tmp_path / "sm")]) == 0
    assert "max_text_bytes" not in taken and "max_word_bytes" not in taken  # (the export's defaults)


def test_an_on_device_export_over_an_earlier_one_says_it_replaced_it(tmp_path, capsys, monkeypatch):
    """A .tflite or .litertlm is replaced whole (a SavedModel adds a version instead): said, not silent; a file of
    another kind there (notes, a text, another format) is refused and kept (it was replaced, said only after)."""
    from tf_gpt2.files import atomic_write, bytes_writer

    def export(model, path, **settings):  # (the conversion itself: tests/test_litert.py); a FlatBuffer's header
        atomic_write(path, bytes_writer(b"\x1c\x00\x00\x00TFL3 and the rest"))  # as the export writes its file
        return path

    monkeypatch.setattr("tf_gpt2.litert.export_litert", export)
    out = str(tmp_path / "gpt2.tflite")
    for said in (f"wrote {out}", f"replaced the earlier {out}"):
        assert cli_main([*EXPORT_TINY, "--format", "tflite", "--out", out]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1] == said
    (tmp_path / "notes").write_text("my notes")
    (tmp_path / "phone.litertlm").write_bytes((tmp_path / "gpt2.tflite").read_bytes())  # the other on-device kind
    for kind, path in (("tflite", "notes"), ("litertlm", "phone.litertlm")):  # (convert's .keras: CASES)
        kept = (tmp_path / path).read_bytes()
        assert cli_main([*EXPORT_TINY, "--format", kind, "--out", str(tmp_path / path)]) == 2
        assert f"{tmp_path / path} is a file but no .{kind} file: writing there would replace it" in \
            capsys.readouterr().err
        assert (tmp_path / path).read_bytes() == kept
    (tmp_path / "v1.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3 version 1")  # a link to the model in use, replaced
    os.symlink("v1.tflite", tmp_path / "current.tflite")  # as `mv` replaces one: said so (said "replaced the earlier")
    assert cli_main([*EXPORT_TINY, "--format", "tflite", "--out", str(tmp_path / "current.tflite")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"wrote {tmp_path / 'current.tflite'} in place of the link there (to v1.tflite, which is left as it was)")
    assert (tmp_path / "v1.tflite").read_bytes().endswith(b"version 1")
    assert not os.path.islink(tmp_path / "current.tflite")
    os.symlink("notes", tmp_path / "to-notes.tflite")  # a link to a file of another kind: the link is replaced, and
    os.symlink("gone.tflite", tmp_path / "dangling.tflite")  # the notes kept; a link to nothing is said so
    for link, said in (("to-notes.tflite", "to notes, which is left as it was"),
                       ("dangling.tflite", "to gone.tflite, which is not there")):
        assert cli_main([*EXPORT_TINY, "--format", "tflite", "--out", str(tmp_path / link)]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1] == (
            f"wrote {tmp_path / link} in place of the link there ({said})")
    assert (tmp_path / "notes").read_text() == "my notes" and not os.path.exists(tmp_path / "gone.tflite")


def test_a_file_size_limit_and_another_backend_end_in_one_line_naming_the_file(tmp_path):
    """A write cut short by the disk or a size limit (EFBIG here, from RLIMIT_FSIZE) names the file it was writing
    (a SavedModel's version, written by TensorFlow, as a checkpoint or safetensors' Rust writer), and the temp
    folder where it was staged in one (TensorFlow's own writer, there); an export on the JAX backend
    says it needs TensorFlow (not a JAX tracer's error); `--strategy tpu` on a machine without one says so."""
    import os

    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question:\n" * 40)
    train = ["train", "--data", str(tmp_path / "text.txt"), "--out", str(tmp_path / "run"), "--vocab", "char",
             "--preset", "gpt2-tiny", "--n-layer", "2", "--n-embd", "64", "--n-positions", "32", "--steps", "2",
             "--eval-interval", "2", "--batch-size", "2", "--block-size", "16", "--sample-tokens", "0", "--no-xla"]
    export = ["export", "--random-init", "gpt2-tiny", "--out", str(tmp_path / "sm")]
    from conftest import make_hf_model

    from tf_gpt2.tokenizer import GPT2Tokenizer, default_vocab_files

    default_vocab_files()  # GPT-2's vocabulary files, unpacked into the cache before the limit, and tiktoken's copy
    GPT2Tokenizer()
    make_hf_model(vocab_size=50257, n_positions=16, n_embd=16, n_layer=1, n_head=2).save_pretrained(tmp_path / "src")
    convert = ["convert", str(tmp_path / "src"), str(tmp_path / "hf")]  # safetensors' own writer (Rust): 3.2 MB
    # One process runs the commands of a backend one after another (TensorFlow loads once), each one's status and
    # what it wrote to Python's stderr kept apart (TensorFlow's C++ lines, if any, are not seen here; the
    # out-of-memory test below reads a whole process's stderr).
    code = ("import contextlib, io, json, resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))  # the checkpoint: 1.3 MB\n"
            "from tf_gpt2.cli import main\n"
            "said = []\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    with contextlib.redirect_stderr(io.StringIO()) as err:\n"
            "        said.append((main(argv), err.getvalue()))\n"
            "print(json.dumps(said))")
    tflite = ["export", "--random-init", "gpt2-tiny", "--format", "tflite", "--cache-length", "32", "--out",
              str(tmp_path / "m.tflite")]  # staged as a SavedModel in the temp folder first
    (tmp_path / "staging").mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(tmp_path / "staging")}
    saved_model = ["export", "--random-init", "gpt2-tiny", "--out", str(tmp_path / "served")]  # TensorFlow's writer
    # Last, as it connects the process to a cluster ("Please provide a TPU Name to connect to": no flag takes one).
    tpu = [*train[:4], str(tmp_path / "tpu"), *train[5:], "--strategy", "tpu"]
    expected = {"tensorflow": ((train, f"File too large (while writing): {tmp_path}/run/checkpoint"),
                               (saved_model, f"File too large (while writing): {tmp_path}/served/1"),
                               (convert, f"File too large (while writing): {tmp_path}/hf/model.safetensors"),
                               (tflite, f"File too large in the temp folder {tmp_path}/staging, where it is staged "
                                        f"(set TMPDIR to stage it elsewhere) (while writing): {tmp_path}/m.tflite"),
                               (tpu, "--strategy tpu found no TPU on this machine (TPUs not found in the cluster)")),
                "jax": ((export, "a SavedModel export writes TensorFlow graphs: run it with KERAS_BACKEND=tensorflow "
                                 "(this process runs Keras on jax"),)}
    for backend, commands in expected.items():
        run = subprocess.run([sys.executable, "-c", code, json.dumps([argv for argv, _ in commands])],
                             capture_output=True, text=True, timeout=300, env={**env, "KERAS_BACKEND": backend})
        assert run.returncode == 0, run.stderr[-3000:]
        for (argv, message), (status, said) in zip(commands, json.loads(run.stdout.strip().splitlines()[-1]),
                                                   strict=True):
            assert status == 2 and said.strip().splitlines()[-1].startswith(f"tf-gpt2 {argv[0]}: error: {message}"), \
                said
    assert not os.path.exists(tmp_path / "run" / "checkpoint.npz") and not os.path.exists(tmp_path / "sm")
    assert not os.path.exists(tmp_path / "served") and not os.path.exists(tmp_path / "tpu")  # made, then removed
    assert not os.path.exists(tmp_path / "hf" / "model.safetensors") and not os.path.exists(tmp_path / "m.tflite")
    assert os.listdir(tmp_path / "staging") == []


def test_training_out_of_memory_ends_in_one_line_with_a_hint_and_status_2(tmp_path):
    """A batch whose logits need 60 GiB, under a 20 GB address-space limit: TensorFlow's allocation fails. The line
    says so without TensorFlow's graph-building traceback and hint, and gives ours; the process ends with status 2,
    not the abort ("double free", 134) that TensorFlow's heap gave the interpreter's ordinary exit."""
    import resource

    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question. " * 200)
    code = "import sys, tf_gpt2_launcher\nsys.exit(tf_gpt2_launcher.main())"  # the console script's own call
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (20 * 10**9, resource.RLIM_INFINITY))  # noqa: E731
    run = subprocess.run(
        [sys.executable, "-c", code, "train", "--data", str(tmp_path / "text.txt"), "--out", str(tmp_path / "run"),
         "--preset", "gpt2-tiny", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32",
         "--batch-size", "5000", "--steps", "1", "--eval-interval", "1", "--eval-batches", "1", "--sample-tokens", "0"],
        capture_output=True, text=True, timeout=300, preexec_fn=limit,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 2, run.stderr[-3000:]
    assert re.fullmatch(r"tf-gpt2 train: error: Out of memory while trying to allocate [\d.]+GiB\. \(lower "
                        r"--batch-size, with --grad-accum to keep the batch, or --block-size; --remat and --loss-chunk "
                        r"keep less per step\)", run.stderr.strip().splitlines()[-1]), run.stderr[-3000:]


@pytest.mark.parametrize("backend", ["numpy"])  # (torch too: it takes seconds more to import)
def test_a_backend_other_than_tensorflow_or_jax_is_refused_at_import_in_one_line(backend):
    """KERAS_BACKEND=torch failed deep inside generate and eval, and halfway through a run of train."""
    code = "import sys, tf_gpt2_launcher\nsys.exit(tf_gpt2_launcher.main())"
    env = {**os.environ, "KERAS_BACKEND": backend}
    run = subprocess.run([sys.executable, "-c", code, "generate", "hi", "--random-init", "gpt2-tiny"], env=env,
                         capture_output=True, text=True, timeout=300)
    said = f"tf_gpt2 runs on Keras' TensorFlow or JAX backend, not '{backend}': set KERAS_BACKEND=tensorflow"
    assert run.returncode == 2 and run.stderr.strip() == f"tf-gpt2 generate: error: {said} (the default) or jax"
    python = subprocess.run([sys.executable, "-c", "import tf_gpt2"], env=env, capture_output=True, text=True)
    assert python.returncode == 1 and f"ImportError: {said}" in python.stderr


def test_a_shard_damaged_after_it_was_prepared_fails_training_in_one_short_line(tmp_path, capsys):
    """Ids beyond the vocabulary, found as training reads them (inside tf.data), end in the check's own line."""
    from tf_gpt2.data import prepare

    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question:\n" * 40)
    manifest = prepare(str(tmp_path / "text.txt"), str(tmp_path / "data"), vocab="char", verbose=False)
    shard = tmp_path / "data" / manifest["splits"]["train"][0]["file"]
    shard.write_bytes(b"\xff" * shard.stat().st_size)  # same size, every id 65535
    assert cli_main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--preset",
                     "gpt2-tiny", "--n-layer", "1", "--n-positions", "16", "--steps", "2", "--eval-interval", "2",
                     "--batch-size", "2", "--block-size", "16", "--sample-tokens", "0", "--no-xla", "--warmup-steps",
                     "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) < 300, err
    assert err[0] == (f"tf-gpt2 train: error: shard {shard} holds token id 65535, outside the vocabulary of "
                      f"{manifest['vocab_size']} its manifest declares: it was written with another vocabulary, "
                      "or changed since")


def test_prompts_and_vocabularies_that_cannot_apply_are_refused_before_any_work(tmp_path, capsys):
    """Refused in one line before a model is loaded or trained, and before anything is written: a prompt with bytes
    that are not UTF-8 (Python keeps them as lone surrogates, which GPT-2's BPE reads as U+FFFD without a word), the
    demo's prompt outside Shakespeare's characters or a negative length (which cut its prompt), `--vocab` against
    shards already tokenized with the other vocabulary (which trained on theirs and recorded the flag)."""
    from tf_gpt2.data import prepare

    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question:\n" * 40)
    prepare(str(tmp_path / "text.txt"), str(tmp_path / "data"), verbose=False)
    prepare(str(tmp_path / "text.txt"), str(tmp_path / "chars"), vocab="char", verbose=False)
    out = str(tmp_path / "out")
    for command, message in (
            (["generate", "caf\udce9", "--random-init", "gpt2-tiny"],
             "the prompt is not UTF-8 text: byte e9 after 'caf'"),
            (["demo", "--out", out, "--prompt", "caf\udce9"], "the prompt is not UTF-8 text: byte e9"),
            (["demo", "--out", out, "--prompt", "Zoë:"], "character 'ë' of the prompt is not in Shakespeare's text"),
            (["demo", "--out", out, "--prompt", "ÿ Zoë"], "characters 'ÿ', 'ë' of the prompt are not"),  # as written
            (["demo", "--out", out, "--max-new-tokens", "-3"], "--max-new-tokens must be a positive integer, got -3"),
            (["demo", "--out", out, "--prompt", ""], "the prompt is empty"),
            (["train", "--data", str(tmp_path / "data"), "--out", out, "--sample-prompt", "caf\udce9"],
             "--sample-prompt is not UTF-8 text: byte e9"),
            (["train", "--data", str(tmp_path / "data"), "--out", out, "--vocab", "char", "--preset", "gpt2-tiny",
              "--steps", "1", "--block-size", "16", "--batch-size", "2", "--eval-interval", "1"],
             f"--vocab char tokenizes raw text, and {tmp_path / 'data'} holds shards already tokenized with --vocab "
             "gpt2"),
            (["train", "--data", str(tmp_path / "chars"), "--out", out, "--vocab", "gpt2"],  # the default, asked for
             f"--vocab gpt2 tokenizes raw text, and {tmp_path / 'chars'} holds shards already tokenized with --vocab "
             "char")):
        assert cli_main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"tf-gpt2 {command[0]}: error: ") and message in err[0], err
        assert not os.path.exists(out), os.listdir(out)  # (its lock too: the folder was made for the run)


def test_a_warning_is_a_line_of_the_command_not_a_source_line(tmp_path, capsys, monkeypatch):
    """A warning the package gives during a command is said as the command's own line, as its errors are (it came
    as "/…/tf_gpt2/cli.py:274: UserWarning: …" and the source line that called it)."""
    import warnings

    from tf_gpt2 import GPT2, GPT2Config

    chars = list("ab :\n")
    GPT2(GPT2Config(vocab_size=len(chars), n_positions=8, n_embd=8, n_layer=1, n_head=2,
                    characters=sorted(chars))).save(tmp_path / "c.keras")
    GPT2(GPT2Config(vocab_size=len(chars), n_positions=8, n_embd=8, n_layer=1, n_head=2,
                    characters=sorted(chars))).save_pretrained(tmp_path / "hf")  # an earlier save, and beside it
    (tmp_path / "hf" / "vocab.json").write_text("{}")  # a tokenizer's file, which a character model's folder drops
    def shown(message, category, filename, lineno, file=None, line=None):  # as Python shows one (pytest records them)
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    before, load = warnings.formatwarning, GPT2.from_pretrained

    def loading(cls, *args, **kwargs):  # another library's warning on the way: shown as Python shows it
        warnings.warn_explicit("kept as it was", DeprecationWarning, os.path.join(os.sep, "lib", "other.py"), 3)
        return load(*args, **kwargs)

    monkeypatch.setattr(GPT2, "from_pretrained", classmethod(loading))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = shown
        assert cli_main(["convert", str(tmp_path / "c.keras"), str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if "vocab.json" in line]
    assert said and said[0].startswith("tf-gpt2 convert: warning: ") and ".py:" not in said[0], err
    assert os.path.join(os.sep, "lib", "other.py") + ":3: DeprecationWarning: kept as it was" in err, err
    assert warnings.formatwarning is before  # (the command's format ends with it)


def test_generate_refuses_an_output_that_cannot_write_what_the_model_may_write(tmp_path, capsys, monkeypatch):
    """A standard output in cp1252 (Windows, `> out.txt`) failed partway through the text with "'charmap' codec
    can't encode ...": refused before any text is made, with the fix; a character model whose characters it can
    write runs (the demo's, Shakespeare's, is ASCII), as does any model where the stream replaces what it cannot."""
    import io

    from tf_gpt2 import GPT2, GPT2Config

    for chars, name in ((list("abc :\n"), "ascii.keras"), (list("abcЖ :\n"), "cyrillic.keras")):
        GPT2(GPT2Config(vocab_size=len(chars), n_positions=16, n_embd=8, n_layer=1, n_head=2,
                        characters=sorted(chars))).save(tmp_path / name)

    def generate(*model, errors="strict", command=("generate", "ab"), **environ):
        out = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", errors=errors)
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.delenv("PYTHONIOENCODING", raising=False)
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        status = cli_main([*command, *model, "--max-new-tokens", "3"] if command[0] == "generate" else [*command])
        out.flush()
        monkeypatch.undo()
        return status, out.buffer.getvalue(), capsys.readouterr().err

    status, written, err = generate("--random-init", "gpt2-tiny")
    assert status == 2 and written == b"" and "error: standard output writes cp1252, which cannot hold '\u4e2d', and " \
        "the model may write it: set PYTHONUTF8=1 (or PYTHONIOENCODING=utf-8)" in err, err
    status, written, err = generate("--model", str(tmp_path / "cyrillic.keras"))
    assert status == 2 and "cannot hold 'Ж'" in err, err
    status, written, _ = generate("--model", str(tmp_path / "ascii.keras"))
    assert status == 0 and written.startswith(b"ab") and len(written) == len(b"ab") + 3 + len(os.linesep), written
    assert generate("--random-init", "gpt2-tiny", errors="replace")[0] == 0
    status, _, err = generate("--random-init", "gpt2-tiny", PYTHONIOENCODING="cp1252")  # it outranks PYTHONUTF8
    assert status == 2 and "may write it: set PYTHONIOENCODING=utf-8 (it is cp1252)" in err, err
    (tmp_path / "text.txt").write_text("春眠不觉晓，处处闻啼鸟。\n" * 40, encoding="utf-8")  # train's samples too
    status, _, err = generate(command=["train", "--data", str(tmp_path / "text.txt"), "--vocab", "char", "--out",
                                       str(tmp_path / "run"), "--preset", "gpt2-tiny", "--steps", "2", "--block-size",
                                       "16", "--batch-size", "2", "--eval-interval", "2", "--sample-tokens", "8"])
    assert status == 2 and "cannot hold '。'" in err and "or print no samples (--sample-tokens 0)" in err, err
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
    status, _, err = generate(command=["train", "--data", str(tmp_path / "text.txt"), "--out", str(tmp_path / "bpe"),
                                       "--preset", "gpt2-tiny", "--steps", "2", "--sample-tokens", "8"])
    assert status == 2 and "cannot hold '\u4e2d'" in err, err  # GPT-2's BPE: refused before the text is tokenized
    assert not (tmp_path / "bpe" / "data").exists()


@pytest.mark.parametrize("command", [["train", "--out", "x", "--init-from", ""], ["train", "--out", "x", "--data", ""],
                                     ["train", "--out", ""], ["export", "--random-init", "gpt2-tiny", "--out", ""],
                                     ["generate", "hi", "--model", ""], ["convert", "", "x"], ["eval", ""]])
def test_an_empty_path_or_name_is_refused_not_taken_as_none_given(capsys, command):
    """An unset shell variable ($CKPT) gives ""; `--init-from ""` trained a new model, `--data ""` trained on the
    bundled Shakespeare, `export --out ""` wrote saved_models/gpt2."""
    with pytest.raises(SystemExit) as refused:
        cli_main(command)
    assert refused.value.code == 2 and ": an empty value names nothing" in capsys.readouterr().err


def test_help_and_a_bad_flag_answer_without_loading_tensorflow():
    """The console script parses before `tf_gpt2/__init__` (and TensorFlow) loads."""
    from conftest import console_script

    run = _fresh_python(
        "import runpy, sys\n"
        "for argv in (['train', '--help'], ['--help'], ['train', '--out', 'x', '--steps', 'many']):\n"
        f"    sys.argv = [{console_script()!r}, *argv]\n"
        "    try:\n"
        "        runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "    except SystemExit as done:\n"
        "        print('exit', done.code)\n"
        "print('loaded', sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))\n"
        "print('package left', 'tf_gpt2' in sys.modules)\n")
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout.splitlines()
    assert [line for line in out if line.startswith("exit")] == ["exit 0", "exit 0", "exit 2"]
    assert "loaded []" in out and "package left False" in out
    assert "--steps STEPS" in run.stdout and "{demo,prepare,train,generate,convert,export,eval}" in run.stdout
    assert run.stderr.splitlines()[-1] == "tf-gpt2 train: error: argument --steps: invalid int value: 'many'"
    assert "I0000" not in run.stderr and "absl" not in run.stderr


def test_the_console_script_is_the_launcher_and_the_package_loads_whole_after_it():
    """After parsing, the launcher runs the package's `__init__`: the model's Keras classes are registered."""
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "tf-gpt2"]
    assert script.value == "tf_gpt2_launcher:main"
    run = _fresh_python(
        "import sys, tf_gpt2_launcher, keras\n"
        "code = tf_gpt2_launcher.main(['eval', '/nonexistent.txt', '--random-init', 'gpt2-tiny'])\n"
        "import tf_gpt2\n"
        "print(code, tf_gpt2.GPT2.__name__, keras.saving.get_registered_object('tf_gpt2>GPT2') is tf_gpt2.GPT2)\n")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["2", "GPT2", "True"]
    assert "No such file or directory: /nonexistent.txt" in run.stderr


def test_version_is_the_packages(capsys, monkeypatch):
    import importlib.metadata

    import tf_gpt2
    from tf_gpt2.cli import build_parser

    with pytest.raises(SystemExit) as ended:
        cli_main(["--version"])
    assert ended.value.code == 0 and capsys.readouterr().out == f"tf-gpt2 {tf_gpt2.__version__}\n"

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)  # a checkout run without installing it
    assert build_parser().parse_args(["prepare", "--out", "d"]).command == "prepare"  # every command still parses


def test_prepare_runs_without_keras_or_tensorflow(tmp_path):
    """`tf-gpt2 prepare` reads no model: the console script runs it without loading Keras and TensorFlow (5 s of a
    0.3 s command), in both vocabularies; the other commands load the package whole (above)."""
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("Привет, мир. The quick brown fox.\r\n" * 50, encoding="utf-8")
    run = _fresh_python(
        "import sys, tf_gpt2_launcher\n"
        "sys.modules['tensorflow'] = sys.modules['keras'] = None  # any import of them now fails\n"
        f"for vocab in ('gpt2', 'char'):\n"
        f"    print(tf_gpt2_launcher.main(['prepare', {str(tmp_path / 'texts')!r}, '--vocab', vocab, '--out', "
        f"{str(tmp_path)!r} + '/' + vocab]))\n")
    assert run.returncode == 0, run.stderr[-2000:]
    assert [line for line in run.stdout.splitlines() if line in ("0", "2")] == ["0", "0"], run.stdout
    for vocab in ("gpt2", "char"):
        assert (tmp_path / vocab / "manifest.json").exists()
    run = subprocess.run(  # where its output redraws a bar (a terminal; PyCharm's console, as Keras takes it)
        [sys.executable, "-c", "import sys, tf_gpt2_launcher\n"
         f"code = tf_gpt2_launcher.main(['prepare', {str(tmp_path / 'texts')!r}, '--out', {str(tmp_path / 'bar')!r}])\n"
         "print(code, 'keras' in sys.modules)"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYCHARM_HOSTED": "1"})
    assert run.stdout.split()[-2:] == ["0", "True"], run.stdout[-2000:]  # Keras' bar, and Keras loaded for it
    assert "I0000" not in run.stderr and "absl" not in run.stderr  # (their start-up lines dropped, as for the rest)


def test_ctrl_c_while_tensorflow_loads_is_said_in_one_line_with_status_130():
    """The launcher loads TensorFlow after parsing; a Ctrl-C then (Python's KeyboardInterrupt, raised here where the
    load runs: a real signal lands at a moment no test can choose) ends as a command's does, not in a traceback."""
    run = _fresh_python(
        "import sys, tf_gpt2_launcher\n"
        "def ctrl_c(*args):\n"
        "    raise KeyboardInterrupt\n"
        "tf_gpt2_launcher._load = ctrl_c\n"
        "code = tf_gpt2_launcher.main(['eval', '/nonexistent.txt', '--random-init', 'gpt2-tiny'])\n"
        "print(code, [name for name in sys.modules if name.startswith('tf_gpt2.')])\n")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["130", "[]"]  # and no half-made package left behind
    assert run.stderr.strip().splitlines()[-1] == "tf-gpt2 eval: interrupted", run.stderr[-2000:]
    run = _fresh_python(  # before the command line is parsed (its first tenth of a second): no traceback either
        "import argparse, sys, tf_gpt2_launcher\n"
        "def ctrl_c(*args, **kwargs):\n"
        "    raise KeyboardInterrupt\n"
        "argparse.ArgumentParser.parse_args = ctrl_c\n"
        "print(tf_gpt2_launcher.main(['prepare', 'texts', '--out', 'data']))\n")
    assert run.stdout.split() == ["130"] and run.stderr.strip() == "tf-gpt2: interrupted", run.stderr[-2000:]


def test_the_launcher_called_after_the_package_was_imported_runs_the_command(capsys):
    import tf_gpt2_launcher

    assert tf_gpt2_launcher.main(["eval", "/nonexistent.txt", "--random-init", "gpt2-tiny"]) == 2
    assert capsys.readouterr().err.strip() == "tf-gpt2 eval: error: No such file or directory: /nonexistent.txt"


def test_tensorflow_start_up_lines_are_dropped_and_other_lines_kept(capfd):
    import os

    from tf_gpt2_launcher import tensorflow_start_up_lines_dropped

    absl = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1796118916.739730   11498 cudart_stub.cc:31] Could not find cuda drivers\n"
            "E0000 00:00:1796118920.709379   11498 cuda_platform.cc:52] failed call to cuInit\n")
    with tensorflow_start_up_lines_dropped():
        os.write(2, (absl + "a warning of the user's own\n").encode())
    assert capfd.readouterr().err == "a warning of the user's own\n"
    with pytest.raises(ImportError):  # when loading fails, everything is shown
        with tensorflow_start_up_lines_dropped():
            os.write(2, absl.encode())
            raise ImportError("libcudart.so: cannot open shared object file")
    assert capfd.readouterr().err == absl


def test_generate_continues_a_prompt_file_or_standard_input_as_written(tmp_path, capsys, monkeypatch):
    """A prompt given as an argument loses the line breaks that end it (`"$(cat f)"`), and `-` was continued as the
    text "-" with standard input unread: --prompt-file reads a whole text, CRLF and all, from a file, a .gz or
    standard input (-)."""
    import gzip
    import io

    from tf_gpt2 import GPT2, GPT2Config

    GPT2(GPT2Config(vocab_size=6, n_positions=16, n_embd=8, n_layer=1, n_head=2,
                    characters=sorted("ab\r\né "))).save(tmp_path / "chars.keras")
    prompt = "ab\r\né \r\n"
    (tmp_path / "p.txt").write_bytes(prompt.encode())
    (tmp_path / "p.txt.gz").write_bytes(gzip.compress(prompt.encode()))
    (tmp_path / "empty.txt").write_text("")
    model = ["--model", str(tmp_path / "chars.keras"), "--max-new-tokens", "3"]

    def generate(*command, stdin=b""):
        closed = stdin is None  # (a process started with `<&-`)
        text = isinstance(stdin, str)  # (a notebook's standard input: text, no bytes under it)
        monkeypatch.setattr(sys, "stdin", None if closed else io.StringIO(stdin) if text else
                            io.TextIOWrapper(io.BytesIO(stdin), encoding="ascii"))
        return cli_main(["generate", *command, *model]), capsys.readouterr()

    status, given = generate(prompt)
    assert status == 0 and given.out.startswith(prompt) and len(given.out) == len(prompt) + 3 + 1, given
    for source in (["--prompt-file", str(tmp_path / "p.txt")], ["--prompt-file", str(tmp_path / "p.txt.gz")]):
        assert generate(*source) == (0, given)
    assert generate("--prompt-file", "-", stdin=prompt.encode()) == (0, given)  # not the locale's encoding
    for command, stdin, message in (
            (["-"], b"", "the prompt '-' reads nothing: give --prompt-file - to read the prompt from standard input"),
            ([], b"", "the prompt is empty: give the text to continue, or --prompt-file FILE"),
            ([""], b"", "the prompt is empty: give the text to continue"),  # (said after the model loaded)
            (["ab", "--prompt-file", str(tmp_path / "p.txt")], b"", "give the text to continue or --prompt-file, not"),
            (["--prompt-file", "-"], b"ab\xff", "standard input is not UTF-8 text: byte ff at byte offset 2 (line 1)"),
            (["--prompt-file", "-"], "ab ab ab ab".encode("utf-16-le"), "standard input is not UTF-8 text: its start "
                                                                         "reads as UTF-16LE without a byte-order mark"),
            (["--prompt-file", "-"], b"\x1f\x8b\x08\x00", "; it starts as gzip does: decompress it on its way in "
                                                          "(zcat FILE.gz | ...)"),  # (it said: name it .txt.gz)
            (["--prompt-file", "-"], b"", "standard input is empty: no prompt to continue"),
            (["--prompt-file", "-"], None, "standard input is closed: give the text in a file"),
            (["--prompt-file", "-"], "ab", "standard input here is a text stream, not bytes: give the text in a file"),
            (["--prompt-file", str(tmp_path / "empty.txt")], b"", f"{tmp_path / 'empty.txt'} is empty: no prompt")):
        status, said = generate(*command, stdin=stdin)
        assert status == 2 and said.out == "" and message in said.err, said


def test_a_file_where_an_output_folder_would_be_is_named(tmp_path, capsys):
    """`convert m.keras notadir/m.keras` (and into notadir/hf) with notadir a file: makedirs' "File exists:
    notadir" named a folder that is not there."""
    from tf_gpt2 import GPT2, GPT2Config

    GPT2(GPT2Config.from_preset("gpt2-tiny", n_layer=1, n_embd=32, n_head=2)).save(tmp_path / "m.keras")
    (tmp_path / "notadir").write_text("a file")
    for dst in ("m.keras", "hf", "deeper/m.keras"):
        assert cli_main(["convert", str(tmp_path / "m.keras"), str(tmp_path / "notadir" / dst)]) == 2
        assert capsys.readouterr().err.strip() == ("tf-gpt2 convert: error: Not a directory (a file, where a folder to "
                                                   f"write in would be): {tmp_path / 'notadir'}")
    assert (tmp_path / "notadir").read_text() == "a file"


def test_a_failed_write_to_standard_output_is_said_as_one(tmp_path):
    """`tf-gpt2 prepare ... > /dev/full` said "No space left on device" alone: read as the dataset's disk being full."""
    from conftest import console_script

    (tmp_path / "t.txt").write_text("hello world\n" * 50, encoding="utf-8")
    with open("/dev/full", "w") as full:  # (Linux's: every write fails with ENOSPC)
        run = subprocess.run([console_script(), "prepare", str(tmp_path / "t.txt"), "--out", str(tmp_path / "p")],
                             stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.splitlines() == [
        "tf-gpt2 prepare: error: No space left on device: standard output"], run.stderr
