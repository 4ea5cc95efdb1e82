import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tf_gpt2 import GPT2, GPT2Config
from tf_gpt2.cli import main as cli_main
from tf_gpt2.export import LiteRTGenerator, export_saved_model, litert_bytes

pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def model():
    # A large init spreads the logits, so greedy choices are not decided by rounding noise.
    keras.utils.set_random_seed(0)
    return GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=64, initializer_range=0.3))


def test_saved_model_in_a_fresh_process_without_the_package(model, tmp_path):
    path = export_saved_model(model, str(tmp_path / "gpt2"))
    assert path == str(tmp_path / "gpt2" / "1")
    ids = np.array([[464, 3290, 318, 0], [40, 1101, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.int32)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    script = textwrap.dedent(f"""
        import sys, json, numpy as np
        sys.modules["tf_gpt2"] = None  # the package must not be needed to serve
        import tensorflow as tf, tensorflow_text  # noqa: F401  (the in-graph tokenizer's ops)
        m = tf.saved_model.load({path!r})
        ids, mask = np.load({str(tmp_path / "ids.npy")!r}), np.load({str(tmp_path / "mask.npy")!r})
        logits = m.signatures["serving_default"](token_ids=tf.constant(ids), attention_mask=tf.constant(mask))["logits"]
        np.save({str(tmp_path / "logits.npy")!r}, logits.numpy())
        knobs = dict(max_new_tokens=tf.constant(6), temperature=tf.constant(0.0), top_k=tf.constant(0),
                     top_p=tf.constant(1.0), seed=tf.constant(0))
        out = m.signatures["generate"](token_ids=tf.constant(ids), attention_mask=tf.constant(mask), **knobs)
        text = m.signatures["generate_text"](text=tf.constant(["Hello world"]), **knobs)["text"]
        print(json.dumps({{"ids": out["token_ids"].numpy().tolist(), "text": text.numpy()[0].decode()}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    result = json.loads(run.stdout.strip().splitlines()[-1])
    logits = np.load(tmp_path / "logits.npy")
    for row in range(2):
        n = mask[row].sum()
        np.testing.assert_allclose(logits[row, :n], np.asarray(model(ids[row:row + 1, :n]))[0], atol=1e-4)
    expected = model.generate([[464, 3290, 318], [40, 1101]], max_new_tokens=6, stop_ids=[])
    assert result["ids"] == expected
    assert result["text"] == model.generate("Hello world", max_new_tokens=6)


def test_saved_model_versions_and_signatures_listed(model, tmp_path):
    base = str(tmp_path / "m")
    assert export_saved_model(model, base).endswith("/1")
    assert export_saved_model(model, base).endswith("/2")
    with pytest.raises(FileExistsError):
        export_saved_model(model, base, version=2)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", base + "/1", "--tag_set", "serve"], capture_output=True, text=True)
    for name in ("serving_default", "generate", "generate_text"):
        assert name in shown.stdout


def test_litert_fp32_matches_keras_in_the_interpreter(model):
    gen = LiteRTGenerator(litert_bytes(model, max_length=32))
    prompt = [464, 3290, 318, 257]
    ids = np.zeros((1, 32), np.int32)
    ids[0, :4] = prompt
    out = gen.prefill(token_ids=ids, length=np.int32(4))
    full = np.asarray(model(np.array([prompt + [11]])))
    assert np.abs(out["logits"][0] - full[0, 3]).max() <= 1e-4
    step = gen.decode(token_id=np.array([[11]], np.int32), position=np.int32(4), cache=out["cache"])
    assert np.abs(step["logits"][0] - full[0, 4]).max() <= 1e-4
    assert gen.generate(prompt, max_new_tokens=12) == model.generate(prompt, max_new_tokens=12, stop_ids=[])


def _teacher_forced_choices(gen, prompt, continuation):
    """The interpreter's greedy choice at each step, fed the reference continuation."""
    ids = np.zeros((1, gen.max_length), np.int32)
    ids[0, : len(prompt)] = prompt
    out = gen.prefill(token_ids=ids, length=np.int32(len(prompt)))
    choices = []
    for position, token in enumerate(continuation, start=len(prompt)):
        choices.append(int(np.argmax(out["logits"][0])))
        out = gen.decode(token_id=np.array([[token]], np.int32), position=np.int32(position), cache=out["cache"])
    return choices


def test_litert_quantized_variants_run_and_mostly_agree(model):
    prompt = [464, 3290, 318]
    reference = model.generate(prompt, max_new_tokens=24, stop_ids=[])
    fp32_size = len(litert_bytes(model, max_length=32))
    for quantize, min_agreement in (("fp16", 0.9), ("int8", 0.75)):
        flatbuffer = litert_bytes(model, max_length=32, quantize=quantize)
        assert len(flatbuffer) < 0.6 * fp32_size
        choices = _teacher_forced_choices(LiteRTGenerator(flatbuffer), prompt, reference)
        agreement = np.mean(np.array(choices) == np.array(reference))
        assert agreement >= min_agreement, (quantize, agreement)


def test_bad_export_arguments(model, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        litert_bytes(model, quantize="int4")
    with pytest.raises(ValueError, match="max_length must be in \\[1, 64\\]"):
        litert_bytes(model, max_length=65)
    assert cli_main(["export", "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert "unknown export format 'onnx'" in capsys.readouterr().err
    gen = LiteRTGenerator(litert_bytes(model, max_length=8))
    with pytest.raises(ValueError, match="exceeds the exported max_length 8"):
        gen.generate([1, 2, 3], max_new_tokens=6)


def test_export_cli_tflite(tmp_path):
    out = str(tmp_path / "tiny.tflite")
    assert cli_main(["export", "--format", "tflite", "--preset", "gpt2-tiny", "--max-length", "16", "--out", out]) == 0
    assert LiteRTGenerator(out).max_length == 16
