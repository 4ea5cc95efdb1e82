import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import lora_model, spread_tiny_model

from tf_gpt2 import GPT2Tokenizer
from tf_gpt2.export import export_saved_model


@pytest.fixture(scope="module")
def model():
    return spread_tiny_model()


@pytest.fixture(scope="module")
def exported(served_tiny):
    """The model's SavedModel version (`served_tiny`) for the tests that only read it."""
    return served_tiny


def test_saved_model_versions_and_signatures_listed(model, tmp_path):
    base = str(tmp_path / "m")
    assert export_saved_model(model, base).endswith("/1")
    # TF Serving reads a folder's name as an int64 (ParseVersionNumber): "007" is version 7.
    os.makedirs(os.path.join(base, "007"))
    with pytest.warns(UserWarning, match=r"version 2 is older than version 7 in .*m: TF Serving's default version "
                                         r"policy serves only the newest, 7"):
        assert export_saved_model(model, base, version=2).endswith("/2")  # written, and said
    with pytest.raises(FileExistsError):
        export_saved_model(model, base, version=2)
    for version in (0, -3, True, 2.0):  # TF Serving loads only positive versions: never renumbered silently
        with pytest.raises(ValueError, match="version must be a positive integer"):
            export_saved_model(model, base, version=version)
    # A number past int64 is no version, which the server skips without a word (and numbering on from it would
    # never recover).
    os.makedirs(os.path.join(base, "99999999999999999999"))
    with pytest.raises(FileExistsError, match=r"m/007 exists: it is version 7 to TF Serving: choose another"):
        export_saved_model(model, base, version=7)
    with pytest.raises(ValueError, match=r"version must be at most 9223372036854775807 \(TF Serving reads it as a "
                                         r"64-bit integer\), got 9223372036854775808"):
        export_saved_model(model, base, version=2**63)
    from tf_gpt2.export import _next_version

    assert _next_version(base) == 8
    os.makedirs(tmp_path / "signed" / "-1")  # version -1 to the server: taken, and numbered on from 0
    assert _next_version(str(tmp_path / "signed")) == 1
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", base + "/1", "--tag_set", "serve"], capture_output=True, text=True)
    keys = set(re.findall(r'SignatureDef key: "(\w+)"', shown.stdout))  # ("generate" is in "generate_text" too)
    assert {"serving_default", "generate", "generate_text", "tokenize"} <= keys, shown.stdout[-2000:]


def test_keras_export_takes_token_ids_by_default(model, tmp_path):
    """`model.export(path)`, Keras' own SavedModel (its error for `model.save("dir")` points to it), takes int32 ids
    of any batch and length: Keras' default signature takes floats, which GPT2 refuses as ids."""
    import keras
    import tensorflow as tf

    model.export(str(tmp_path / "k"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "k"))
    for ids in (np.array([[1, 2, 3], [4, 5, 6]], np.int32), np.arange(9, dtype=np.int32)[None]):
        np.testing.assert_allclose(loaded.serve(tf.constant(ids)).numpy(), np.asarray(model(ids)), atol=1e-5)
    # format="litert" of any length wrote TensorFlow ops the interpreter cannot run ("FlexStridedSlice"), silently
    for given in (None, [keras.InputSpec(shape=(1, None), dtype="int32")]):  # (the default, or one of its own)
        with pytest.raises(ValueError, match=r"format='litert' of ids of any length writes TensorFlow \(Flex\) ops"):
            model.export(str(tmp_path / "any.tflite"), format="litert", verbose=False, input_signature=given)
    assert not (tmp_path / "any.tflite").exists()
    from ai_edge_litert.interpreter import Interpreter

    ids = np.array([[5, 1, 4, 2, 3], [0, 2, 2, 7, 1]], np.int32)  # one length, as the error says (any batch): the
    # interpreter runs it
    model.export(str(tmp_path / "five.tflite"), format="litert", verbose=False,
                 input_signature=[keras.InputSpec(shape=(None, 5), dtype="int32")])
    interpreter = Interpreter(model_path=str(tmp_path / "five.tflite"))
    run = interpreter.get_signature_runner()
    (logits,) = run(**{name: ids for name in run.get_input_details()}).values()
    np.testing.assert_allclose(logits, np.asarray(model(ids)), atol=1e-4)


def test_served_text_is_bounded_before_tokenizing(exported):
    """The in-graph BPE is quadratic in the length of a word: a word of GPT-2's pre-tokenizer (letters, digits,
    other symbols or whitespace) longer than 256 bytes is refused at once, in its own row; the row beside it is
    answered. Text without spaces is cut at punctuation (Japanese of 264 bytes without a space was refused)."""
    import time

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the in-graph tokenizer's ops)

    served = tf.saved_model.load(exported)
    generate_text = served.signatures["generate_text"]
    knobs = dict(max_new_tokens=tf.constant([2]), temperature=tf.constant([0.0]), top_k=tf.constant([0]),
                 top_p=tf.constant([1.0]), seed=tf.constant([0]))
    greedy = generate_text(text=tf.constant(["Hello world"]), **knobs)
    assert greedy["text"].shape == (1,)
    # A row that asks for filters at temperature 0 is answered with the rule, as model.generate refuses them
    filtered = generate_text(text=tf.constant(["Hello world"]), **{**knobs, "top_k": tf.constant([40]),
                                                                    "top_p": tf.constant([0.5])})
    assert filtered["error"].numpy()[0].startswith(b"top_k and top_p filter what is sampled, and temperature 0")
    for text, message in (("a" * 1_000_000, "text is longer than 512 bytes"),  # 8 bytes per position of 64
                          ("x" * 300, "text has a word of more than 256 bytes (a run of letters, digits"),
                          ("1" * 300, "text has a word of more than 256 bytes"),
                          ("日本" + " " * 300 + "語", "text has a word of more than 256 bytes"),  # whitespace too
                          ("word " * 200, "text is longer than 512 bytes"),
                          (b"caf\xc3 ok", "text is not UTF-8")):  # (as model.generate and the CLI refuse it)
        start = time.perf_counter()
        answer = generate_text(text=tf.constant(["ok", text]), **knobs)
        assert answer["error"].numpy()[0] == b"" and answer["error"].numpy()[1].decode().startswith(message)
        assert answer["length"].numpy()[0] > 0 and answer["length"].numpy()[1] == 0 and answer["text"].numpy()[1] == b""
        assert time.perf_counter() - start < 5  # refused before tokenizing (tokenizing 300 a's alone: ~0.1 s)
    japanese = "日本語のテキストです。" * 8  # 264 bytes without a space: GPT-2's pre-tokenizer cuts it at each 。
    answer = served.signatures["tokenize"](text=tf.constant([japanese]))
    ids = answer["token_ids"].numpy()[0, :answer["length"].numpy()[0]].tolist()
    assert answer["error"].numpy()[0] == b"" and ids == GPT2Tokenizer().encode(japanese)


def test_saved_model_is_readable_by_other_users(exported):
    import stat

    path = exported
    modes = {stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
             for root, dirs, files in os.walk(path) for name in files}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755 and modes == {0o644}
    # No temporary directory left beside the version; the batching parameters for the server are there, and the lock
    # that keeps two exports apart (readable too: TF Serving loads only numbered directories).
    base = os.path.dirname(path)
    assert sorted(os.listdir(base)) == [".lock", "1", "batching_parameters.txt"]
    assert stat.S_IMODE(os.stat(os.path.join(base, ".lock")).st_mode) == 0o644


def test_the_saved_model_stores_each_weight_once(model, exported):
    path = exported
    stored = sum(os.path.getsize(os.path.join(root, name))
                 for root, _, names in os.walk(os.path.join(path, "variables")) for name in names)
    weights = sum(np.asarray(w).nbytes for w in model.weights)
    assert weights <= stored <= 1.05 * weights


def test_a_bfloat16_export_holds_half_the_weights_and_answers_as_the_bfloat16_model(model, exported, tmp_path):
    """`dtype="bfloat16"`: weights and arithmetic in bfloat16, logits float32. Measured on this model: served logits
    within 0.094 of the bfloat16 model's own (0.85 of the float32 model's, logits up to 12), the same greedy tokens
    as its `generate` (on another model, 0.13 apart, about one bfloat16 step: answers parted where tokens nearly
    tied, as docs/serving.md says)."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the in-graph tokenizer's ops)

    path = export_saved_model(model, str(tmp_path / "bf16"), max_new_tokens_limit=8, dtype="bfloat16")
    size = lambda p: sum(os.path.getsize(os.path.join(root, f))  # noqa: E731
                         for root, _, files in os.walk(os.path.join(p, "variables")) for f in files)
    assert 0.45 < size(path) / size(exported) < 0.55
    served = tf.saved_model.load(path)
    ids = np.random.RandomState(0).randint(0, 50257, (4, 20)).astype(np.int32)
    logits = served.signatures["serving_default"](token_ids=ids, length=np.full(4, 20, np.int32))["logits"]
    assert logits.dtype == tf.float32
    half = model.with_dtype("bfloat16")
    np.testing.assert_allclose(logits.numpy(), np.asarray(half(ids)).astype(np.float32), atol=0.25)
    settings = dict(max_new_tokens=np.full(4, 8, np.int32), temperature=np.zeros(4, np.float32),
                    top_k=np.zeros(4, np.int32), top_p=np.ones(4, np.float32), seed=np.zeros(4, np.int32))
    out = served.signatures["generate"](token_ids=ids, length=np.full(4, 20, np.int32), **settings)
    rows = [row[:n].tolist() for row, n in zip(out["token_ids"].numpy(), out["length"].numpy())]
    assert rows == half.generate(ids.tolist(), max_new_tokens=8)
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_saved_model(model, str(tmp_path / "x"), dtype="float16")


@pytest.mark.parametrize("base, served", [("float32", "bfloat16"), ("bfloat16", "float32")])
def test_a_lora_model_is_served_with_its_adapters_merged_in_either_dtype(base, served, tmp_path):
    """A model with LoRA adapters (base weights in `base`, as `--base-dtype` holds them) exported in the other dtype:
    its adapters merged into the served kernels, the served logits its own (failed in `with_dtype` with Keras'
    "set_weights ... length 44, expecting 28")."""
    import tensorflow as tf

    model, ids = lora_model(base), np.array([[3, 1, 4, 1, 5, 9, 2, 6]], np.int32)
    with pytest.warns(UserWarning, match="no tokenizer"):
        path = export_saved_model(model, str(tmp_path / "m"), dtype=served)
    loaded = tf.saved_model.load(path)
    logits = loaded.signatures["serving_default"](token_ids=ids, length=np.array([8], np.int32))["logits"].numpy()
    expected = np.asarray(model(ids))
    np.testing.assert_allclose(logits, expected, atol=0.15)  # bfloat16 on one side: measured 0.05
    assert not [v.name for v in loaded.variables if "lora" in v.name]
    for variable in model.variables:
        if "lora_kernel_b" in variable.path:
            variable.assign(np.zeros(variable.shape))
    assert np.abs(np.asarray(model(ids)) - expected).max() > 1, "the adapters must matter"


def test_a_saved_lora_model_converts_with_its_adapters_merged(tmp_path):
    """A `.keras` of a LoRA model holds its kernels merged (Keras' saving merges them), so `tf-gpt2 convert` and
    `export` read a plain model: the Hugging Face copy answers as the LoRA model."""
    from tf_gpt2 import GPT2
    from tf_gpt2.cli import main as cli_main

    model, ids = lora_model("bfloat16"), np.array([[3, 1, 4, 1, 5, 9, 2, 6]], np.int32)
    model.save(tmp_path / "lora.keras")
    assert cli_main(["convert", str(tmp_path / "lora.keras"), str(tmp_path / "hf")]) == 0
    converted = np.asarray(GPT2.from_pretrained(str(tmp_path / "hf"))(ids))
    np.testing.assert_allclose(converted, np.asarray(model(ids)), atol=0.15)  # float32 against bfloat16: 0.06


def test_two_exports_into_one_base_at_once_get_two_whole_versions(tmp_path):
    """Two processes export into one base directory at the same moment (a barrier file starts both): each gets its
    own version, whole (both chose the same version and the second to publish failed with "Directory not empty")."""
    base, go = tmp_path / "m", tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, time, warnings
        warnings.simplefilter("ignore")
        from tf_gpt2 import GPT2, GPT2Config
        from tf_gpt2.export import export_saved_model
        model = GPT2(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        print(export_saved_model(model, {str(base)!r}, max_new_tokens_limit=4))
    """)
    base.mkdir()
    (base / "batching_parameters.txt").write_text("max_batch_size { value: 8 }\n")  # the user's own: kept
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    time.sleep(1)
    go.touch()
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in results]
    assert sorted(out.strip().splitlines()[-1] for out, _ in results) == [str(base / "1"), str(base / "2")]
    for version in ("1", "2"):
        assert os.path.exists(base / version / "saved_model.pb") and os.listdir(base / version / "variables")
    assert (base / "batching_parameters.txt").read_text() == "max_batch_size { value: 8 }\n"


def test_an_export_into_a_version_folder_is_refused_naming_the_base_the_server_watches(tmp_path):
    """`--out saved_models/gpt2/1` would write `gpt2/1/1`, which a server watching saved_models/gpt2 never loads."""
    from tf_gpt2 import GPT2, GPT2Config

    version = tmp_path / "gpt2" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    model = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=50, n_positions=16))
    with pytest.raises(ValueError, match=f"{version} is a version of a served model .*: give the base folder the "
                                         f"server watches, {tmp_path / 'gpt2'}, and the export goes beside"):
        export_saved_model(model, str(version))
    assert os.listdir(version) == ["saved_model.pb"]
    plain = tmp_path / "my_model"  # a SavedModel of tf.saved_model.save, not a served version: no advice to go up
    plain.mkdir()
    (plain / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ValueError, match=f"{plain} holds a SavedModel of its own .*: give a folder of served versions"):
        export_saved_model(model, str(plain), version=3)
