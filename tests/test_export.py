import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tf_gpt2 import GPT2, GPT2Config
from tf_gpt2.export import export_saved_model


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


def test_served_signatures_refuse_bad_prompts_instead_of_answering(model, tmp_path):
    """A served model has no eager Python in front of it: the checks are in the graph."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the in-graph tokenizer's ops)

    served = tf.saved_model.load(export_saved_model(model, str(tmp_path / "m"), max_new_tokens_limit=8))
    logits, generate = served.signatures["serving_default"], served.signatures["generate"]
    ids, mask = tf.constant([[464, 3290, 0]]), tf.constant([[1, 1, 0]])
    assert logits(token_ids=ids, attention_mask=mask)["logits"].shape == (1, 3, 50257)
    bad = [
        (dict(token_ids=tf.constant([[464, 50257, 0]])), "token ids must be < 50257"),
        (dict(token_ids=tf.constant([[-1, 3290, 0]])), "token ids must be >= 0"),
        (dict(attention_mask=tf.constant([[1, 2, 0]])), "attention_mask values must be 0 or 1"),
        (dict(attention_mask=tf.constant([[1, 0, 1]])), "1s followed by 0s"),
        (dict(attention_mask=tf.constant([[0, 0, 0]])), "1s followed by 0s"),
        (dict(attention_mask=tf.constant([[1, 1, 0], [1, 0, 0]])), "same shape"),
    ]
    knobs = dict(max_new_tokens=tf.constant(2), temperature=tf.constant(0.0), top_k=tf.constant(0),
                 top_p=tf.constant(1.0), seed=tf.constant(0))
    for change, message in bad:
        inputs = {"token_ids": ids, "attention_mask": mask, **change}
        for call in (lambda: logits(**inputs), lambda: generate(**inputs, **knobs)):
            with pytest.raises(tf.errors.InvalidArgumentError, match=message):
                call()
    for knob, value, message in (("top_k", tf.constant(-1), "top_k must be >= 0"),
                                 ("temperature", tf.constant(float("nan")), "temperature must be >= 0")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            generate(token_ids=ids, attention_mask=mask, **{**knobs, knob: value})


def test_served_text_is_bounded_before_tokenizing(model, tmp_path):
    """The in-graph BPE is quadratic in the length of a word: a long run without spaces is refused at once."""
    import time

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the in-graph tokenizer's ops)

    served = tf.saved_model.load(export_saved_model(model, str(tmp_path / "m"), max_new_tokens_limit=4))
    generate_text = served.signatures["generate_text"]
    knobs = dict(max_new_tokens=tf.constant(2), temperature=tf.constant(0.0), top_k=tf.constant(0),
                 top_p=tf.constant(1.0), seed=tf.constant(0))
    assert generate_text(text=tf.constant(["Hello world"]), **knobs)["text"].shape == (1,)
    for text, message in (("a" * 1_000_000, "text is longer than 512 bytes"),  # 8 bytes per position of 64
                          ("x" * 300, "a run of more than 256 bytes without whitespace"),
                          ("word " * 200, "text is longer than 512 bytes")):
        start = time.perf_counter()
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            generate_text(text=tf.constant(["ok", text]), **knobs)
        assert time.perf_counter() - start < 5  # refused before tokenizing (tokenizing 300 a's alone: ~0.1 s)


def test_saved_model_is_readable_by_other_users(model, tmp_path):
    import stat

    os.umask(0o022)
    path = export_saved_model(model, str(tmp_path / "m"))
    modes = {stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
             for root, dirs, files in os.walk(path) for name in files}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755 and modes == {0o644}
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]  # no temporary directory left beside the version


def test_the_saved_model_stores_each_weight_once(model, tmp_path):
    path = export_saved_model(model, str(tmp_path / "m"))
    stored = sum(os.path.getsize(os.path.join(root, name))
                 for root, _, names in os.walk(os.path.join(path, "variables")) for name in names)
    weights = sum(np.asarray(w).nbytes for w in model.weights)
    assert weights <= stored <= 1.05 * weights
