"""Perplexity evaluation against an independent Hugging Face torch computation on a tiny random checkpoint."""

import gzip
import io
import json
import math
import os
import sys

import numpy as np
import pytest
from conftest import make_hf_model

from tf_gpt2 import GPT2, GPT2Config, GPT2Tokenizer
from tf_gpt2.cli import main as cli_main
from tf_gpt2.data import embedded_corpus
from tf_gpt2.detokenize import wikitext_detokenize
from tf_gpt2.evaluation import EvalResult, evaluate, windows

CONTEXT = 32  # the tiny model's n_positions: a few hundred tokens need many windows


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random HF GPT-2 with the real vocabulary, saved to disk: (HF model, directory)."""
    hf = make_hf_model(seed=3, vocab_size=50257, n_positions=CONTEXT, n_embd=24, n_layer=2, n_head=3)
    directory = tmp_path_factory.mktemp("eval") / "hf"
    hf.save_pretrained(directory)
    return hf, str(directory)


@pytest.fixture(scope="module")
def text():
    with gzip.open(embedded_corpus(), "rt", encoding="utf-8") as f:
        return f.read()[:1500]


def hf_strided_nll(hf, ids, context, stride):
    """Reference: the transformers perplexity recipe, one window at a time in torch, no batching or padding.
    Window k feeds ids[k*stride : k*stride + context + 1] and counts the targets not counted before."""
    import torch

    ids = torch.tensor([ids])
    total, counted_until = 0.0, 1
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + context + 1, ids.shape[1])
        with torch.no_grad():
            logits = hf(ids[:, begin:end - 1]).logits.double()
        log_probs = torch.log_softmax(logits, -1)[0]
        for target in range(counted_until, end):
            total -= log_probs[target - 1 - begin, ids[0, target]].item()
        counted_until = end
        if end == ids.shape[1]:
            break
    return total


@pytest.mark.parametrize("stride", [CONTEXT, 12, 5])
def test_strided_perplexity_matches_hf(checkpoint, text, stride):
    hf, directory = checkpoint
    ids = [GPT2Tokenizer().eot_id] + GPT2Tokenizer().encode(text)
    result = evaluate(GPT2.from_pretrained(directory), text, context=CONTEXT, stride=stride, batch_size=4)
    reference = hf_strided_nll(hf, ids, CONTEXT, stride)
    assert result.tokens == len(ids) - 1 > 10 * CONTEXT
    print(f"stride {stride}: relative difference {abs(result.nll - reference) / abs(reference):.1e}")  # docs quote it
    assert abs(result.nll - reference) <= 1e-4 * abs(reference)
    assert math.isclose(result.perplexity, math.exp(reference / (len(ids) - 1)), rel_tol=1e-4)
    assert math.isclose(result.bits_per_byte, reference / math.log(2) / len(text.encode("utf-8")), rel_tol=1e-4)


def test_one_window_equals_hf_language_model_loss(checkpoint):
    """A text that fits one context is the plain LM loss that transformers computes from labels."""
    import torch

    hf, directory = checkpoint
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
    ids = [GPT2Tokenizer().eot_id] + GPT2Tokenizer().encode(text)
    assert len(ids) <= CONTEXT + 1
    with torch.no_grad():
        hf_loss = hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    result = evaluate(GPT2.from_pretrained(directory), text, context=CONTEXT)
    assert math.isclose(result.loss, hf_loss, rel_tol=1e-4)


def test_windows_score_every_token_once():
    """Every token after the first is scored exactly once, from at most `context` tokens."""
    n = 200
    for context, stride in ((8, 8), (8, 3), (16, 1), (5, 5)):
        spans = windows(n, context, stride)
        scored = [t for begin, end, count in spans for t in range(end - count, end)]
        assert scored == list(range(1, n)), (context, stride)
        for begin, end, count in spans:
            assert end - 1 - begin <= context and count <= end - 1 - begin
    full = [end - 1 - begin for begin, end, _ in windows(n, 16, 1)[1:]]
    assert min(full) == 16  # after the first window, each token is predicted from a full context


def test_ids_and_text_agree(checkpoint, text):
    _, directory = checkpoint
    model = GPT2.from_pretrained(directory)
    tok = GPT2Tokenizer()
    from_text = evaluate(model, text[:300], context=16, stride=8)
    from_ids = evaluate(model, [tok.eot_id] + tok.encode(text[:300]), context=16, stride=8)
    assert math.isclose(from_text.nll, from_ids.nll, rel_tol=1e-6) and from_text.tokens == from_ids.tokens
    with pytest.raises(ValueError, match="needs the text"):
        from_ids.bits_per_byte
    import transformers  # a tokenizer of its own (`generate` takes it): "GPT2Tokenizer has no attribute eot_id"

    from tf_gpt2.tokenizer import default_vocab_files

    theirs = evaluate(model, text[:300], tokenizer=transformers.GPT2TokenizerFast(*default_vocab_files()), context=16,
                      stride=8)
    assert (theirs.nll, theirs.tokens, theirs.bytes) == (from_text.nll, from_text.tokens, from_text.bytes)


def test_wikitext_detokenizer():
    raw = (" = = Early life = = \n The 1 @,@ 000 @-@ year @-@ old city ( population 3 @.@ 5 million ) 's "
           "mayor said \" no \" , then left ; it rained . \n")
    assert wikitext_detokenize(raw) == (" == Early life ==\nThe 1,000-year-old city (population 3.5 million)'s "
                                        "mayor said \"no\", then left; it rained.\n")
    crlf = raw.replace("\n", "\r\n")  # a copy with Windows line ends is joined the same, its line ends kept
    assert wikitext_detokenize(crlf) == wikitext_detokenize(raw).replace("\n", "\r\n")


def test_eval_cli_matches_library(checkpoint, text, tmp_path, capsys, monkeypatch):
    _, directory = checkpoint
    path = tmp_path / "valid.txt"
    path.write_text(text[:600], encoding="utf-8")
    assert cli_main(["eval", str(path), "--model", directory, "--context", "16", "--stride", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = evaluate(GPT2.from_pretrained(directory), text[:600], context=16, stride=8)
    assert report["tokens"] == expected.tokens
    assert math.isclose(report["perplexity"], expected.perplexity, rel_tol=1e-6)
    assert math.isclose(report["bits_per_byte"], expected.bits_per_byte, rel_tol=1e-6)
    assert cli_main(["eval", str(path), "--model", directory, "--context", "16", "--stride", "8"]) == 0
    shown = capsys.readouterr().out  # (a file: the result alone; Keras' bar was redrawn into it)
    assert shown == (f"{path}: {expected.tokens:,} tokens, {expected.bytes:,} bytes\nloss {expected.loss:.4f} nats/"
                     f"token  perplexity {expected.perplexity:.3f}  bits/byte {expected.bits_per_byte:.4f}\n"), shown
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal: a bar over the windows, then the result
    assert cli_main(["eval", str(path), "--model", directory, "--context", "16", "--stride", "8"]) == 0
    shown = capsys.readouterr().out
    assert "\r" in shown and "window" in shown and shown.endswith(f"bits/byte {expected.bits_per_byte:.4f}\n")
    crlf = tmp_path / "crlf.txt"  # scored as written: its \r are text, and bytes
    crlf.write_bytes(text[:300].replace("\n", "\r\n").encode("utf-8"))
    assert cli_main(["eval", str(crlf), "--model", directory, "--context", "16", "--stride", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["bytes"] == os.path.getsize(crlf)
    expected = evaluate(GPT2.from_pretrained(directory), text[:300].replace("\n", "\r\n"), context=16, stride=8)
    assert report["tokens"] == expected.tokens and math.isclose(report["loss"], expected.loss, rel_tol=1e-6)
    gz = tmp_path / "crlf.txt.gz"  # a gzip file is scored on its text, as prepare reads it
    gz.write_bytes(gzip.compress(crlf.read_bytes()))
    assert cli_main(["eval", str(gz), "--model", directory, "--context", "16", "--stride", "8", "--json"]) == 0
    gz_report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: v for k, v in gz_report.items() if k != "file"} == {k: v for k, v in report.items() if k != "file"}
    whole = tmp_path / "whole.txt"  # past the first KiB a read looks at, through a pipe (`<(zcat ...)`, /dev/stdin),
    whole.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))  # read once: "File or stream is not seekable."
    assert whole.stat().st_size > 1024
    reports = []
    for piped in (False, True):
        read, write = os.pipe()
        os.write(write, whole.read_bytes())
        os.close(write)
        try:
            assert cli_main(["eval", f"/dev/fd/{read}" if piped else str(whole), "--model", directory, "--context",
                             "16", "--stride", "8", "--json"]) == 0
        finally:
            os.close(read)
        reports.append({k: v for k, v in json.loads(capsys.readouterr().out.strip().splitlines()[-1]).items()
                        if k != "file"})
    assert reports[0] == reports[1] and reports[0]["bytes"] == whole.stat().st_size


def test_a_perplexity_past_float64s_range_is_inf_and_null_in_the_json(tmp_path, capsys, monkeypatch):
    """A diverged model's loss above 709 nats/token: exp overflows (it ended `tf-gpt2 eval` in "OverflowError: math
    range error", the report lost)."""
    assert EvalResult(nll=7000.0, tokens=10, bytes=40).perplexity == pytest.approx(math.exp(700))
    assert EvalResult(nll=7100.0, tokens=10, bytes=40).perplexity == math.inf
    assert math.isnan(EvalResult(nll=math.nan, tokens=10, bytes=40).perplexity)  # NaN stays NaN
    monkeypatch.setattr("tf_gpt2.evaluation.evaluate", lambda *args, **kwargs: EvalResult(8000.0, 10, 40))
    (tmp_path / "t.txt").write_text("Hello world")
    assert cli_main(["eval", str(tmp_path / "t.txt"), "--random-init", "gpt2-tiny", "--json"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "Infinity" not in line and json.loads(line)["perplexity"] is None and json.loads(line)["loss"] == 800.0
    assert cli_main(["eval", str(tmp_path / "t.txt"), "--random-init", "gpt2-tiny"]) == 0
    assert "loss 800.0000 nats/token  perplexity inf" in capsys.readouterr().out


def test_bad_input_is_named(tmp_path, capsys, monkeypatch):
    model = GPT2(GPT2Config(vocab_size=50257, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    for kwargs, message in ((dict(context=17), "context must be in 1..16"), (dict(stride=0), "stride must be"),
                            (dict(batch_size=0), "batch_size"), (dict(detokenize="ptb"), "unknown detokenizer"),
                            (dict(context=16 / 4), r"context must be an integer, got 4\.0"),  # (a bare TypeError)
                            (dict(stride=4.0), "stride must be an integer"), (dict(context=True), "context must be an"),
                            (dict(batch_size=2.0), "batch_size must be an integer"),
                            (dict(batch_size=None), "batch_size must be an integer, got None")):
        with pytest.raises(ValueError, match=message):
            evaluate(model, "some text", **kwargs)
    with pytest.raises(ValueError, match="text is empty"):
        evaluate(model, "")
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 50257\)"):
        evaluate(model, [0, 5, 50257])
    for ids in ([1.7, 2.2, 3.9], [True, False, True], [5, True], np.array([1.0, 2.0]),  # not truncated, not 1/0,
                b"hello world"):  # not byte values
        with pytest.raises(TypeError, match="token ids must be (a sequence of )?integers"):
            evaluate(model, ids)
    for kwargs in dict(detokenize="wikitext"), dict(tokenizer=GPT2Tokenizer()):  # they read text, not ids
        with pytest.raises(ValueError, match=f"^{next(iter(kwargs))} reads text, and token ids were given"):
            evaluate(model, [0, 5, 7], **kwargs)
    with pytest.raises(ValueError, match="notes.txt is not UTF-8 text: U\\+D800 after 'a'"):
        evaluate(model, "a\ud800b", source="notes.txt")
    broken = GPT2.from_config(model.get_config())
    broken.set_weights([w * np.nan for w in model.get_weights()])
    with pytest.raises(FloatingPointError, match=r"^the model produced non-finite log-probabilities \(NaN or inf\) "
                                                 r"on notes.txt: check its weights"):
        evaluate(broken, "some text", source="notes.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert cli_main(["eval", str(empty), "--random-init", "gpt2-tiny"]) == 2
    assert f"{empty} is empty: nothing to score" in capsys.readouterr().err
    assert cli_main(["eval", str(empty), "--model", str(tmp_path / "none.keras")]) == 2  # said before any model loads
    assert f"{empty} is empty: nothing to score" in capsys.readouterr().err
    for flags, said in ((["--stride", "0"], "--stride must be >= 1, got 0"),  # (were Python's names, after the load)
                        (["--context", "8", "--stride", "9"], "--stride must be in 1..--context (8), got 9"),
                        (["--batch-size", "0"], "--batch-size must be >= 1, got 0")):
        assert cli_main(["eval", str(empty), "--model", str(tmp_path / "none.keras"), *flags]) == 2
        assert capsys.readouterr().err.strip().endswith(f"error: {said}")
    (tmp_path / "some.txt").write_text("some text to score\n")
    assert cli_main(["eval", str(tmp_path / "some.txt"), "--random-init", "gpt2-tiny", "--context", "9999"]) == 2
    assert "error: --context must be in 1..128 (the model's n_positions), got 9999" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert cli_main(["eval", "-", "--random-init", "gpt2-tiny"]) == 2  # (it was called "-")
    assert "standard input is empty: nothing to score" in capsys.readouterr().err
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"text\nthen \xff\xfe\x00 binary")
    assert cli_main(["eval", str(binary)]) == 2
    assert "blob.txt is not UTF-8 text: byte ff at byte offset 10 (line 2)" in capsys.readouterr().err
    assert cli_main(["eval", str(tmp_path / "missing.txt")]) == 2


def test_a_character_model_is_scored_on_its_own_characters():
    """`tf-gpt2 eval` and `evaluate` read text as `generate` does: a character model with its characters."""
    from tf_gpt2.data import char_codec

    chars = list("abc \n")
    model = GPT2(GPT2Config(vocab_size=len(chars), n_positions=16, n_embd=16, n_layer=1, n_head=2, characters=chars))
    text = "abc cab\nba"
    by_text = evaluate(model, text, context=8, stride=4)
    by_ids = evaluate(model, char_codec(chars)[0](text), context=8, stride=4)
    assert by_text.tokens == len(text) - 1 and by_text.bytes == len(text) - 1
    assert by_text.nll == pytest.approx(by_ids.nll, rel=1e-6)
    with pytest.raises(ValueError, match="notes.txt: character 'z' is not in the model's vocabulary"):
        evaluate(model, "abz", source="notes.txt")  # as `tf-gpt2 eval notes.txt` names it
    with pytest.raises(ValueError, match="text is one token: nothing to score"):  # not "empty": it is not
        evaluate(model, "a")


def test_a_short_text_is_not_padded_to_a_large_batch(monkeypatch):
    """`--batch-size 2048` on a text of a few windows ran 2,048 rows of padding (15 GB for a tiny model)."""
    import tf_gpt2.evaluation as evaluation

    model = GPT2(GPT2Config(vocab_size=50257, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    rows, compiled = [], evaluation.compiled

    def counted(model, fn):
        program = compiled(model, fn)
        return lambda inputs, *rest: rows.append(len(inputs)) or program(inputs, *rest)

    text = "The quick brown fox jumps over the lazy dog. " * 4
    spans = len(windows(1 + len(GPT2Tokenizer().encode(text)), 16, 8))
    assert spans == 5
    expected = evaluate(model, text, context=16, stride=8, batch_size=1)
    monkeypatch.setattr(evaluation, "compiled", counted)
    for batch_size, batches in ((2048, [8]), (3, [3, 3]), (5, [5]), (6, [6])):  # powers of two, up to batch_size
        rows.clear()
        result = evaluate(model, text, context=16, stride=8, batch_size=batch_size)
        assert rows == batches and result.nll == pytest.approx(expected.nll, rel=1e-5)


def test_short_texts_of_many_lengths_share_a_few_programs_and_score_as_unpadded():
    """Each text shorter than the context was a program of its own length (a compile per new length); padded to
    powers of two, eight lengths take four, and the padding is not scored."""
    from tf_gpt2.evaluation import _window_nll
    from tf_gpt2.xla import compiled

    model = GPT2(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2, initializer_range=0.3))
    for length in range(3, 11):
        ids = np.random.default_rng(length).integers(0, 50, length)
        logits = np.asarray(model(ids[None]))[0].astype(np.float64)  # unpadded
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        expected = -sum(log_probs[t, ids[t + 1]] for t in range(length - 1))
        assert evaluate(model, ids.tolist()).nll == pytest.approx(expected, rel=1e-5)
    assert compiled(model, _window_nll).experimental_get_tracing_count() == 4  # widths 2, 4, 8 and 16
