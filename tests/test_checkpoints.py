import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest
import tensorflow as tf
from conftest import hf_logits, make_hf_model, padded_gpt2

from tf_gpt2 import GPT2, GPT2Config
from tf_gpt2.checkpoints import openai_name, tensor_names, weight_table
from tf_gpt2.cli import main as cli_main

ODD_CONFIGS = [
    dict(n_layer=1, n_head=2, n_embd=18, vocab_size=77, n_positions=12),
    dict(n_layer=2, n_head=3, n_embd=36, vocab_size=131, n_positions=16),
    dict(n_layer=3, n_head=4, n_embd=52, vocab_size=50, n_positions=9),
]


def _random_ids(cfg, batch=2, seed=0):
    return np.random.RandomState(seed).randint(0, cfg["vocab_size"], (batch, cfg["n_positions"]))


@pytest.mark.parametrize("cfg", ODD_CONFIGS)
def test_hf_logit_parity_and_round_trip(cfg, tmp_path):
    hf = make_hf_model(**cfg)
    hf.save_pretrained(tmp_path / "hf")
    model = GPT2.from_pretrained(tmp_path / "hf")
    ids = _random_ids(cfg)
    reference = hf_logits(hf, ids)
    assert np.abs(np.asarray(model(ids)) - reference).max() <= 1e-4

    import transformers

    model.save_pretrained(tmp_path / "ours")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    assert np.abs(hf_logits(back, ids) - reference).max() <= 1e-4


def test_pytorch_bin_loads_through_the_safe_loader(tmp_path):
    cfg = ODD_CONFIGS[0]
    hf = make_hf_model(**cfg)
    import torch

    hf.config.save_pretrained(tmp_path)  # the legacy layout: config.json + a pickled state dict
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = GPT2.from_pretrained(tmp_path)
    ids = _random_ids(cfg)
    assert np.abs(np.asarray(model(ids)) - hf_logits(hf, ids)).max() <= 1e-4


def _write_openai_checkpoint(hf, directory):
    """An OpenAI-format checkpoint: hparams.json + model.ckpt with openai/gpt-2 variable names."""
    os.makedirs(directory)
    c = hf.config
    with open(os.path.join(directory, "hparams.json"), "w") as f:
        json.dump(dict(n_vocab=c.vocab_size, n_ctx=c.n_positions, n_embd=c.n_embd, n_head=c.n_head,
                       n_layer=c.n_layer), f)
    names, tensors = [], []
    for key, value in hf.transformer.state_dict().items():
        if key.endswith(".attn.bias") or key.endswith("masked_bias"):
            continue
        value = value.numpy()
        if key.endswith(".weight") and value.ndim == 2 and not key.startswith(("wte", "wpe")):
            value = value[None]  # openai/gpt-2 stores conv1d weights as [1, in, out]
        names.append(openai_name(key))
        tensors.append(tf.constant(value))
    prefix = os.path.join(directory, "model.ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model.ckpt"\n')


def test_openai_name_mapping():
    assert openai_name("h.11.attn.c_attn.weight") == "model/h11/attn/c_attn/w"
    assert openai_name("h.0.ln_2.weight") == "model/h0/ln_2/g"
    assert openai_name("ln_f.bias") == "model/ln_f/b"
    assert openai_name("wte.weight") == "model/wte"


def test_openai_tf_checkpoint_parity(tmp_path):
    cfg = ODD_CONFIGS[1]
    hf = make_hf_model(seed=3, **cfg)
    _write_openai_checkpoint(hf, str(tmp_path / "openai"))
    model = GPT2.from_pretrained(str(tmp_path / "openai"))
    ids = _random_ids(cfg)
    assert np.abs(np.asarray(model(ids)) - hf_logits(hf, ids)).max() <= 1e-4
    bare = tmp_path / "bare"  # no `checkpoint` file: its one checkpoint is read; of two, neither is guessed
    shutil.copytree(tmp_path / "openai", bare)
    os.remove(bare / "checkpoint")
    assert GPT2.from_pretrained(str(bare)).count_params() == model.count_params()
    for name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        shutil.copyfile(bare / name, bare / name.replace("model.ckpt", "model.ckpt-2"))
    with pytest.raises(ValueError, match=r"bare holds 2 checkpoints \(model.ckpt-2.index, model.ckpt.index\) and no "
                                         "`checkpoint` file naming one of them"):
        GPT2.from_pretrained(str(bare))
    with pytest.raises(ValueError, match="n_layer=5: a checkpoint's tensors fix its shape"):  # (a TypeError was raised)
        GPT2.from_pretrained(str(tmp_path / "openai"), n_layer=5)
    for override in dict(activation="relu"), dict(layer_norm_epsilon=0.5), dict(norm_position="post"):
        # (each loaded, and the weights computed something else: logits off by up to 2.5)
        with pytest.raises(ValueError, match=f"{next(iter(override))}=.*: a checkpoint's tensors fix its shape .*"
                                             ", what they compute"):
            GPT2.from_pretrained(str(tmp_path / "openai"), **override)
    with pytest.raises(ValueError, match=r"characters=\['a', 'b'\]: .* and what its ids mean \(characters\)"):
        GPT2.from_pretrained(str(tmp_path / "openai"), characters=["a", "b"])  # (a BPE model relabelled, unsaid)
    assert GPT2.from_pretrained(str(tmp_path / "openai"), dropout=0.1, remat=True).config.remat  # the rest is set
    hparams = json.loads((tmp_path / "openai" / "hparams.json").read_text())
    fewer = hparams["n_layer"] - 1  # the checkpoint's last layer left over: refused, not cut off
    (tmp_path / "openai" / "hparams.json").write_text(json.dumps({**hparams, "n_layer": fewer}))
    with pytest.raises(ValueError, match=f"model.ckpt holds layer\\(s\\) h{fewer} past the {fewer} of .*hparams.json: "
                                         "fix its n_layer"):
        GPT2.from_pretrained(str(tmp_path / "openai"))
    (tmp_path / "openai" / "hparams.json").write_text(json.dumps(hparams))
    data = tmp_path / "openai" / "model.ckpt.data-00000-of-00001"  # an interrupted download: the index is whole
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cannot read '.*' from OpenAI checkpoint .*model.ckpt \(.*\): its data "
                                         r"file is damaged or cut short"):
        GPT2.from_pretrained(str(tmp_path / "openai"))


def test_keras_hub_backbone_parity(tmp_path):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=91, num_layers=2, num_heads=3, hidden_dim=30, intermediate_dim=120,
        max_sequence_length=14, dropout=0.1,  # in training only: the parity below is at inference
    )
    for w in backbone.weights:  # make biases and LayerNorm parameters non-trivial
        w.assign(np.random.RandomState(len(w.path)).normal(0, 0.05, w.shape) + np.asarray(w))
    ids = np.random.RandomState(1).randint(0, 91, (2, 14))
    hidden = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    reference = np.asarray(hidden) @ np.asarray(backbone.token_embedding.embeddings).T
    model = GPT2.from_pretrained(backbone)
    assert np.abs(np.asarray(model(ids)) - reference).max() <= 1e-4
    backbone.save_to_preset(str(tmp_path / "preset"))
    from_dir = GPT2.from_pretrained(str(tmp_path / "preset"))
    assert np.abs(np.asarray(from_dir(ids)) - reference).max() <= 1e-4
    assert model.config.dropout == from_dir.config.dropout == 0.1  # the backbone's, as a Hugging Face config's
    # A backbone with LoRA adapters loads with them merged, as its preset holds it (its adapters were left out)
    backbone.enable_lora(2)
    for w in backbone.weights:
        if "lora_kernel" in w.path:
            w.assign(np.random.RandomState(len(w.path)).normal(0, 0.3, w.shape))
    adapted = (np.asarray(backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
               @ np.asarray(backbone.token_embedding.embeddings).T)
    assert np.abs(adapted - reference).max() > 0.01
    assert np.abs(np.asarray(GPT2.from_pretrained(backbone)(ids)) - adapted).max() <= 1e-4
    with keras.name_scope("outer"):  # built in a scope (a model's __init__): its weights' paths start with it
        scoped = keras_hub.models.GPT2Backbone(vocabulary_size=91, num_layers=1, num_heads=2, hidden_dim=8,
                                               intermediate_dim=32, max_sequence_length=8)
    assert scoped.weights[0].path.startswith("outer/")  # (was a bare KeyError 'token_embedding/embeddings')
    short = ids[:, :8]
    expected = (np.asarray(scoped({"token_ids": short, "padding_mask": np.ones_like(short)}))
                @ np.asarray(scoped.token_embedding.embeddings).T)
    assert np.abs(np.asarray(GPT2.from_pretrained(scoped)(short)) - expected).max() <= 1e-4
    mixed = keras_hub.models.GPT2Backbone(vocabulary_size=91, num_layers=1, num_heads=2, hidden_dim=8,
                                          intermediate_dim=32, max_sequence_length=8, dtype="mixed_bfloat16")
    mixed.enable_lora(2)  # its float32 query kernel and adapters, merged in float32 (Keras' merge: in bfloat16)
    query = mixed.transformer_layers[0]._self_attention_layer._query_dense
    query.lora_kernel_b.assign(np.random.RandomState(2).normal(0, 0.3, query.lora_kernel_b.shape))
    scale = query.lora_alpha / query.lora_rank
    update = np.matmul(np.asarray(query.lora_kernel_a), np.asarray(query.lora_kernel_b)) * scale
    merged = (np.asarray(query._kernel) + update).reshape(8, -1)
    np.testing.assert_allclose(np.asarray(GPT2.from_pretrained(mixed).h[0].attn.c_attn.kernel)[:, :8], merged,
                               rtol=0, atol=1e-6)
    with warnings.catch_warnings():  # (Keras names each layer that has nothing to quantize)
        warnings.simplefilter("ignore")
        backbone.quantize("int8")
    with pytest.raises(ValueError, match="keras-hub GPT2Backbone is quantized \\(int8\\): a checkpoint's weights"):
        GPT2.from_pretrained(backbone)
    with pytest.warns(UserWarning, match="removed metadata.json, model.weights.h5$"):
        from_dir.save_pretrained(tmp_path / "preset")  # over the preset: what loads back is the saved model only
    assert sorted(os.listdir(tmp_path / "preset")) == ["config.json", "model.safetensors"]
    assert np.abs(np.asarray(GPT2.from_pretrained(tmp_path / "preset")(ids)) - reference).max() <= 1e-4


def test_a_keras_hub_preset_that_cannot_load_names_its_folder(tmp_path):
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=91, num_layers=1, num_heads=2, hidden_dim=8,
                                             intermediate_dim=32, max_sequence_length=8)
    preset = tmp_path / "preset"
    backbone.save_to_preset(str(preset))
    weights = (preset / "model.weights.h5").read_bytes()
    (preset / "model.weights.h5").write_bytes(weights[: len(weights) // 2])  # an interrupted copy
    with pytest.raises(ValueError, match=f"^cannot load keras-hub preset {preset}: "):
        GPT2.from_pretrained(preset)
    os.remove(preset / "model.weights.h5")  # (keras-hub named model.weights.json, which presets of one file lack)
    with pytest.raises(FileNotFoundError, match=f"^{preset} is a keras-hub preset without its weights: no "
                                                f"{preset}/model.weights.h5 or"):
        GPT2.from_pretrained(preset)
    config = json.loads((preset / "config.json").read_text())
    (preset / "config.json").write_text(json.dumps({**config, "registered_name": "keras_hub>GemmaBackbone"}))
    with pytest.raises(ValueError, match=f"^{preset} is a keras-hub preset of a GemmaBackbone, not of GPT-2's"):
        GPT2.from_pretrained(preset)
    (preset / "config.json").write_text(json.dumps({**config, "registered_name": "keras_hub>GPT2CausalLM"}))
    with pytest.raises(ValueError, match=r"is a Keras model's folder \(keras_hub>GPT2CausalLM; model.save"):
        GPT2.from_pretrained(preset)  # a task saved whole by Keras: no preset


def test_convert_cli_hf_to_keras(tmp_path, capsys):
    cfg = ODD_CONFIGS[0]
    hf = make_hf_model(**cfg)
    hf.save_pretrained(tmp_path / "hf")
    for said in ("wrote", "replaced the earlier"):  # a second run into the same file says so, as export's does
        assert cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "m.keras")]) == 0
        assert capsys.readouterr().out.strip() == f"{said} {tmp_path / 'm.keras'}"
    ids = _random_ids(cfg)
    assert np.abs(np.asarray(GPT2.from_pretrained(str(tmp_path / "m.keras"))(ids)) - hf_logits(hf, ids)).max() <= 1e-4
    assert cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "new" / "sub" / "m.keras")]) == 0  # folders made
    assert (tmp_path / "new" / "sub" / "m.keras").read_bytes()[:2] == b"PK"


def test_a_checkpoint_holding_the_tied_head_as_lm_head_only_loads_exactly(tmp_path):
    """safetensors.torch.save_model keeps one name of a tied pair: GPT2LMHeadModel's `lm_head.weight` stands for
    the token embedding, as transformers reads it."""
    from safetensors import safe_open
    from safetensors.torch import save_model

    cfg = ODD_CONFIGS[0]
    hf = make_hf_model(**cfg)
    hf.config.save_pretrained(tmp_path)
    save_model(hf, str(tmp_path / "model.safetensors"))
    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        assert "lm_head.weight" in f.keys() and "transformer.wte.weight" not in f.keys()
    ids = _random_ids(cfg)
    assert np.abs(np.asarray(GPT2.from_pretrained(str(tmp_path))(ids)) - hf_logits(hf, ids)).max() <= 1e-4


def test_convert_keeps_what_a_character_model_is(tmp_path, capsys):
    """A character model converted to a Hugging Face dir keeps its characters and dropout: loaded back, it reads and
    writes its own text (not GPT-2's BPE); transformers loads the same dir to the same logits."""
    import torch
    from transformers import GPT2LMHeadModel

    chars = list("\n !abcdefghé")
    model = GPT2(GPT2Config(vocab_size=len(chars), n_positions=16, n_embd=16, n_layer=1, n_head=2, dropout=0.1,
                            characters=chars))
    model.save(tmp_path / "c.keras")
    for said in ("wrote", "replaced the earlier"):
        assert cli_main(["convert", str(tmp_path / "c.keras"), str(tmp_path / "hf")]) == 0
        assert capsys.readouterr().out.strip() == f"{said} {tmp_path / 'hf'}"
    os.remove(tmp_path / "hf" / "config.json")  # weights alone are a model's files too
    assert cli_main(["convert", str(tmp_path / "c.keras"), str(tmp_path / "hf")]) == 0
    assert capsys.readouterr().out.strip() == f"replaced the earlier {tmp_path / 'hf'}"
    back = GPT2.from_pretrained(str(tmp_path / "hf"))
    assert back.config.characters == chars and back.config.dropout == 0.1
    capsys.readouterr()
    assert cli_main(["generate", "cafe é", "--model", str(tmp_path / "hf"), "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("cafe é")
    ids = np.array([[3, 4, 5, 11]], dtype="int32")
    with torch.no_grad():
        theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "hf")(torch.tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(back(ids)) - theirs).max() <= 1e-5


@pytest.fixture
def saved_tiny(tmp_path):
    model = GPT2(GPT2Config(vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_a_config_without_dropout_rates_trains_with_transformers_defaults(saved_tiny):
    transformers = pytest.importorskip("transformers")
    from tf_gpt2.config import DROPOUTS

    config = json.loads((saved_tiny / "config.json").read_text())
    (saved_tiny / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in DROPOUTS}))
    theirs = transformers.GPT2Config.from_pretrained(saved_tiny)
    ours = GPT2.from_pretrained(saved_tiny).config
    assert [ours.dropout_rate(n) for n in DROPOUTS] == [getattr(theirs, n) for n in DROPOUTS] == [0.1] * 3


def test_shape_mismatch_names_the_tensor(saved_tiny):
    with pytest.raises(ValueError, match="tensor 'wte.weight' has shape \\(40, 16\\), the model expects \\(40, 32\\)"):
        _load_with_config(saved_tiny, n_embd=32)


def _load_with_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    config = json.load(open(path))
    config.update(changes)
    json.dump(config, open(path, "w"))
    return GPT2.from_pretrained(directory)


def test_config_sizes_are_checked_against_the_tensors_before_a_model_is_built(saved_tiny):
    """A config.json claiming absurd sizes is refused at once (it used to allocate them: minutes to an OOM)."""
    import time

    start = time.perf_counter()
    for changes, message in ((dict(n_layer=2), "the config says n_layer=2, the tensors hold 1 layers"),
                             (dict(n_layer=1000), "the config says n_layer=1000, the tensors hold 1 layers"),
                             (dict(n_layer=10**6), "n_layer must be at most 1024, got 1000000"),
                             (dict(n_layer=1, n_embd=10**9, n_head=1), "n_embd must be at most 65536"),
                             (dict(n_embd=16, n_head=2, n_positions=50_000),
                              "tensor 'wpe.weight' has shape \\(8, 16\\), the model "
                              "expects \\(50000, 16\\)")):
        with pytest.raises(ValueError, match=message):
            _load_with_config(saved_tiny, **changes)
    assert time.perf_counter() - start < 10  # nothing of those sizes was built


def test_corrupt_and_missing_files(saved_tiny, tmp_path):
    with open(saved_tiny / "model.safetensors", "r+b") as f:
        f.seek(3)
        f.write(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="cannot read .*model.safetensors"):
        GPT2.from_pretrained(saved_tiny)
    os.remove(saved_tiny / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        GPT2.from_pretrained(saved_tiny)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        GPT2.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"is not a checkpoint: expected .* \(OpenAI\)$"):
        GPT2.from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "model.keras").write_bytes(b"")  # as in a run folder of tf-gpt2 train
    with pytest.raises(FileNotFoundError, match=r"\(OpenAI\); it holds .*empty/model.keras: pass that file"):
        GPT2.from_pretrained(tmp_path / "empty")
    (saved_tiny / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GPT2.from_pretrained(saved_tiny)


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:248dfc3911869ec4\nsize 548105171\n"


def test_git_lfs_pointers_in_place_of_weights_are_said_as_such(saved_tiny, tmp_path):
    """What a clone made without Git LFS holds in place of each kind of weights file (it was "header too large",
    "not a zip archive", h5py's "file signature not found", TensorFlow's "corrupted")."""
    import keras_hub

    said = "is a Git LFS pointer, not the weights: the repository was cloned without Git LFS \\(`git lfs pull`"
    keras_file = tmp_path / "m.keras"
    GPT2(GPT2Config(vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2)).save(keras_file)
    keras_hub.models.GPT2Backbone(vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=32,
                                  max_sequence_length=8).save_to_preset(str(tmp_path / "preset"))
    _write_openai_checkpoint(make_hf_model(**ODD_CONFIGS[1]), str(tmp_path / "openai"))
    for source, pointer in ((saved_tiny, saved_tiny / "model.safetensors"), (keras_file, keras_file),
                            (tmp_path / "preset", tmp_path / "preset" / "model.weights.h5"),
                            (tmp_path / "openai", tmp_path / "openai" / "model.ckpt.data-00000-of-00001")):
        pointer.write_bytes(LFS_POINTER)
        with pytest.raises(ValueError, match=f"^{pointer} {said}"):
            GPT2.from_pretrained(source)


def test_pickled_weights_that_hold_more_than_tensors_are_refused_without_torchs_advice_to_unpickle(saved_tiny):
    torch = pytest.importorskip("torch")
    os.remove(saved_tiny / "model.safetensors")
    torch.save(torch.nn.Linear(2, 2), saved_tiny / "pytorch_model.bin")  # a whole module pickled: not read
    with pytest.raises(ValueError, match=r"pytorch_model.bin: it holds more than tensors, and reading it would run "
                                         r"code it names \(Unsupported global: GLOBAL torch.nn.modules.linear.Linear "
                                         r"was not an allowed global by default.\)$"):  # (torch: "weights_only=False")
        GPT2.from_pretrained(saved_tiny)


def test_nan_weights_are_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = GPT2(GPT2Config(vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["transformer.ln_f.bias"][0] = np.nan
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="'ln_f.bias' contains NaN"):
        GPT2.from_pretrained(tmp_path)
    # A float64 value that is finite but overflows the float32 weight it goes into would load as inf.
    tensors = {k: v.astype(np.float64) for k, v in load_file(tmp_path / "model.safetensors").items()}
    tensors["transformer.ln_f.bias"][0] = 1e39
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="'ln_f.bias' \\(float64\\) holds values beyond float32's range"):
        GPT2.from_pretrained(tmp_path)
    # and a .keras file's (given to --init-from, a NaN trained as "the loss became nan: try a lower learning rate")
    import keras

    model.h[0].mlp.c_fc.kernel.assign(np.where(np.eye(16, 64) > 0, np.inf, model.h[0].mlp.c_fc.kernel.numpy()))
    keras.Model.save(model, tmp_path / "inf.keras")  # (Keras' own save writes it)
    with pytest.raises(ValueError, match="inf.keras: weight 'h.0.mlp.c_fc.weight' contains NaN or infinite values"):
        GPT2.from_pretrained(tmp_path / "inf.keras")


def test_a_model_with_nan_weights_is_not_saved_over_a_good_one(tmp_path):
    """save_pretrained and save wrote such a model in place of a good file, which then no longer loaded (and
    save_weights, what Keras' ModelCheckpoint calls with save_weights_only, NaN weights over good ones)."""
    from tf_gpt2.files import save_keras

    model = _tiny_model(0)
    model.save_pretrained(tmp_path / "hf")
    save_keras(model, str(tmp_path / "m.keras"))
    model.save_weights(tmp_path / "m.weights.h5")  # (what Keras' ModelCheckpoint writes with save_weights_only)
    before = (_directory_bytes(tmp_path / "hf"), (tmp_path / "m.keras").read_bytes(),
              (tmp_path / "m.weights.h5").read_bytes())
    model.ln_f.beta.assign(np.where(np.arange(16) == 3, np.nan, model.ln_f.beta.numpy()))
    with pytest.raises(ValueError, match=f"weight 'ln_f.bias' contains NaN or infinite values: saving it to "
                                         f"{tmp_path}/hf would write a checkpoint that does not load; nothing was"):
        model.save_pretrained(tmp_path / "hf")
    for save in (model.save, lambda path: save_keras(model, path)):
        with pytest.raises(ValueError, match="weight 'ln_f.bias' contains NaN or infinite values: saving it to "
                                             ".*m.keras would write a model that does not load"):
            save(str(tmp_path / "m.keras"))
    with pytest.raises(ValueError, match="weight 'ln_f.bias' contains NaN or infinite values: saving it to .*m.weights"
                                         ".h5 would write weights that are not finite; nothing was written"):
        model.save_weights(tmp_path / "m.weights.h5")
    assert (_directory_bytes(tmp_path / "hf"), (tmp_path / "m.keras").read_bytes(),
            (tmp_path / "m.weights.h5").read_bytes()) == before
    with pytest.raises(ValueError, match="contains NaN"):
        model.save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    quantized = _tiny_model(0)  # (an int4 layer's kernel is no variable: unpacked from one)
    quantized.quantize("int4")
    quantized.save(tmp_path / "int4.keras")
    assert GPT2.from_pretrained(tmp_path / "int4.keras").quantization == "int4"


def test_weight_table_covers_every_weight_under_the_names_readers_use():
    model = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=30))
    assert {id(v) for v in weight_table(model).values()} == {id(v) for v in model.weights}
    assert list(weight_table(model)) == tensor_names(model.config.n_layer)


def test_padded_vocabulary_never_changes_logits_or_checkpoints(tmp_path):
    """vocab_multiple pads the embedding for speed: HF in, same logits over the real vocabulary, HF out unchanged."""
    cfg = ODD_CONFIGS[1]  # vocab 131 -> 192 rows with vocab_multiple=64
    hf = make_hf_model(**cfg)
    hf.save_pretrained(tmp_path / "hf")
    padded = GPT2.from_pretrained(tmp_path / "hf", vocab_multiple=64)
    assert tuple(padded.wte.embeddings.shape) == (192, cfg["n_embd"]) and padded.config.padded_vocab_size == 192
    ids = _random_ids(cfg)
    logits = np.asarray(padded(ids))
    assert logits.shape[-1] == 131 and np.abs(logits - hf_logits(hf, ids)).max() <= 1e-4
    cache = padded.init_cache(2, cfg["n_positions"])
    first, _ = padded.call_with_cache(ids[:, :4], cache, 0, logits_at=3)
    assert first.shape == (2, 131)
    assert padded.generate(ids[0, :3].tolist(), max_new_tokens=4, stop_ids=[]) == \
        GPT2.from_pretrained(tmp_path / "hf").generate(ids[0, :3].tolist(), max_new_tokens=4, stop_ids=[])
    padded.save_pretrained(tmp_path / "out")
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "out" / "model.safetensors"))["transformer.wte.weight"]
    np.testing.assert_array_equal(saved, hf.transformer.wte.weight.detach().numpy())  # 131 rows, bit-exact
    padded.save(tmp_path / "padded.keras")
    import keras

    reloaded = keras.models.load_model(tmp_path / "padded.keras")
    assert reloaded.config.vocab_multiple == 64
    np.testing.assert_array_equal(np.asarray(reloaded(ids)), logits)


def _tiny_model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    return GPT2(GPT2Config(vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2))


def _directory_bytes(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def test_a_full_disk_during_save_pretrained_changes_neither_file(tmp_path, monkeypatch):
    import safetensors.numpy

    _tiny_model(0).save_pretrained(tmp_path / "m")
    before = _directory_bytes(tmp_path / "m")
    real_save = safetensors.numpy.save_file

    def half_then_full(tensors, path, metadata=None):
        real_save(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        _tiny_model(1).save_pretrained(tmp_path / "m")
    assert _directory_bytes(tmp_path / "m") == before  # weights and config both as they were, no temporaries


def test_weights_and_config_from_different_saves_are_refused(tmp_path, monkeypatch):
    """A crash between the two renames of save_pretrained leaves new weights beside the old config."""
    import tf_gpt2.files

    _tiny_model(0).save_pretrained(tmp_path / "m")
    real_replace, renames = os.replace, []

    def crash_after_first_rename(src, dst):
        renames.append(dst)
        if len(renames) == 2:
            raise KeyboardInterrupt  # stands in for the process dying here
        real_replace(src, dst)

    monkeypatch.setattr(tf_gpt2.files.os, "replace", crash_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        _tiny_model(1).save_pretrained(tmp_path / "m")
    monkeypatch.undo()
    assert renames[0].endswith("model.safetensors")
    with pytest.raises(ValueError, match="saved with another config.json than the one beside it"):
        GPT2.from_pretrained(tmp_path / "m")
    _tiny_model(1).save_pretrained(tmp_path / "m")  # a complete save mends it
    _load_with_config(tmp_path / "m", resid_pdrop=0.2)  # and an edited config.json of one save still loads

    # Over a folder transformers wrote (its config.json carries no id), the same crash left the new weights beside
    # transformers' config, and they loaded with its settings (activation, epsilon) without a word.
    make_hf_model(vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2).save_pretrained(tmp_path / "hf")
    renames.clear()
    monkeypatch.setattr(tf_gpt2.files.os, "replace", crash_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        GPT2(GPT2Config(vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2, activation="gelu",
                        layer_norm_epsilon=1e-3)).save_pretrained(tmp_path / "hf")
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"saved with another config.json than the one beside it \(the weights were "
                                         r"saved for activation='gelu' \(config.json: 'gelu_tanh'\), "
                                         r"layer_norm_epsilon=0.001 \(config.json: 1e-05\)\)"):
        GPT2.from_pretrained(tmp_path / "hf")
    # Weights saved beside a config.json without an id that gives their shape and arithmetic (transformers' own for
    # the same architecture, a copied one) are read.
    _tiny_model(2).save_pretrained(tmp_path / "ours")
    shutil.copy(tmp_path / "ours" / "model.safetensors", tmp_path / "hf" / "model.safetensors")
    assert GPT2.from_pretrained(tmp_path / "hf").config.activation == "gelu_tanh"
    # An earlier save recorded its id alone: beside an id-less config.json it is refused, saying how to pair them
    from safetensors.numpy import load_file, save_file

    from tf_gpt2.checkpoints import _read_safetensors

    metadata = _read_safetensors(str(tmp_path / "hf" / "model.safetensors"), with_tensors=False)[1]
    save_file(load_file(tmp_path / "hf" / "model.safetensors"), tmp_path / "hf" / "model.safetensors",
              metadata={"format": "pt", "tf_gpt2_save_id": metadata["tf_gpt2_save_id"]})
    with pytest.raises(ValueError, match=f"whose tf_gpt2_save_id is '{metadata['tf_gpt2_save_id']}': if this one is "
                                         "meant for them, add that id to it"):
        GPT2.from_pretrained(tmp_path / "hf")
    # transformers' own save of a model it loaded from ours keeps the config's id, not the weights': it loads.
    transformers = pytest.importorskip("transformers")
    transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "m").save_pretrained(tmp_path / "resaved")
    assert "tf_gpt2_save_id" in json.loads((tmp_path / "resaved" / "config.json").read_text())
    np.testing.assert_allclose(np.asarray(GPT2.from_pretrained(tmp_path / "resaved")(np.array([[1, 2, 3]]))),
                               np.asarray(GPT2.from_pretrained(tmp_path / "m")(np.array([[1, 2, 3]]))), atol=1e-6)


def test_tensors_of_the_wrong_dtype_or_twice_are_refused(saved_tiny):
    from safetensors.numpy import load_file, save_file

    path = saved_tiny / "model.safetensors"
    tensors = load_file(path)
    wrong = {**tensors, "transformer.ln_f.bias": tensors["transformer.ln_f.bias"].astype(np.int32)}
    save_file(wrong, path)
    with pytest.raises(ValueError, match="'ln_f.bias' has dtype int32, expected floating point"):
        GPT2.from_pretrained(saved_tiny)
    twice = {**tensors, "ln_f.bias": tensors["transformer.ln_f.bias"] + 1}  # with and without the prefix
    save_file(twice, path)
    with pytest.raises(ValueError, match="tensor 'ln_f.bias' appears twice"):
        GPT2.from_pretrained(saved_tiny)


def test_a_sharded_index_may_not_point_outside_its_directory(saved_tiny, tmp_path):
    (saved_tiny / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")  # only the index is left
    index = {"weight_map": {"transformer.wte.weight": "../elsewhere.safetensors"}}
    (saved_tiny / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a file of .*refusing to read it"):
        GPT2.from_pretrained(saved_tiny)


def test_unreadable_checkpoints_name_the_problem(saved_tiny, tmp_path):
    keras_file = tmp_path / "m.keras"
    _tiny_model(0).save(keras_file)
    keras_file.write_bytes(keras_file.read_bytes()[:1000])
    with pytest.raises(ValueError, match="m.keras is not a readable .keras file: it is truncated"):
        GPT2.from_pretrained(keras_file)
    config = json.loads((saved_tiny / "config.json").read_text())
    del config["n_embd"]
    (saved_tiny / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json lacks n_embd"):
        GPT2.from_pretrained(saved_tiny)
    (saved_tiny / "config.json").write_text("[]")
    with pytest.raises(ValueError, match="holds a JSON list, expected an object"):
        GPT2.from_pretrained(saved_tiny)


def test_saved_checkpoints_are_readable_by_other_users(tmp_path):
    import stat

    os.umask(0o022)
    _tiny_model(0).save_pretrained(tmp_path / "m")
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE(os.stat(tmp_path / "m" / name).st_mode) == 0o644


def test_a_keras_archive_with_missing_parts_names_the_file(tmp_path):
    import zipfile

    good = tmp_path / "good.keras"
    _tiny_model(0).save(good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "partial.keras", "w") as dst:
        for item in src.infolist():
            if item.filename != "config.json":  # a zip, but without the model's config
                dst.writestr(item, src.read(item))
    with pytest.raises(ValueError, match="cannot load .*partial.keras"):
        GPT2.from_pretrained(tmp_path / "partial.keras")


def test_a_saved_directory_works_with_transformers_tokenizer_and_pipeline(tmp_path):
    transformers = pytest.importorskip("transformers")
    from test_tokenizer import SAMPLES

    from tf_gpt2 import GPT2Tokenizer

    model = GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=32))
    model.save_pretrained(tmp_path / "m")
    theirs, ours = transformers.AutoTokenizer.from_pretrained(tmp_path / "m"), GPT2Tokenizer()
    for text in SAMPLES:
        assert theirs.encode(text) == ours.encode(text), text
    generator = transformers.pipeline("text-generation", model=str(tmp_path / "m"), device="cpu")
    out = generator("Hello world", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    expected = model.generate("Hello world", max_new_tokens=4, stop_ids=[])
    assert out == "Hello world" + expected  # the same greedy text through transformers' own stack
    padded_gpt2().save_pretrained(tmp_path / "wide")  # 50,304 rows (nanoGPT's) read GPT-2's text as well
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "wide").encode(SAMPLES[2]) == ours.encode(SAMPLES[2])


def test_a_character_model_saves_no_gpt2_tokenizer_files(tmp_path):
    GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=65, n_positions=16)).save_pretrained(tmp_path / "c")
    assert sorted(os.listdir(tmp_path / "c")) == ["config.json", "model.safetensors"]


def test_saving_over_a_sharded_checkpoint_leaves_only_the_new_one(tmp_path):
    """An index and its shards left beside the new model.safetensors would be read instead of it."""
    hf = make_hf_model(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    hf.save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
    old = sorted(os.listdir(tmp_path / "ckpt"))
    assert "model.safetensors.index.json" in old and "model.safetensors" not in old
    new = GPT2(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3))
    new.save_pretrained(tmp_path / "ckpt")
    left = sorted(os.listdir(tmp_path / "ckpt"))
    assert not [f for f in left if "index" in f or f.startswith("model-")], left
    ids = np.array([[1, 2, 3, 4]])
    np.testing.assert_array_equal(np.asarray(GPT2.from_pretrained(tmp_path / "ckpt")(ids)), np.asarray(new(ids)))
    import transformers

    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ckpt")
    np.testing.assert_allclose(hf_logits(reloaded, ids), np.asarray(new(ids)), atol=1e-4)


def test_a_config_that_breaks_a_rule_names_its_file_in_every_format(saved_tiny, tmp_path):
    """n_embd not divisible by n_head, in a Hugging Face config.json, an OpenAI hparams.json and a .keras file."""
    rule = r"GPT2Config.n_embd \(16\) must be divisible by n_head \(3\)"
    (tmp_path / "openai").mkdir()
    (tmp_path / "openai" / "hparams.json").write_text(json.dumps(dict(n_vocab=40, n_ctx=8, n_embd=16, n_head=3,
                                                                      n_layer=1)))
    with pytest.raises(ValueError, match=f"{tmp_path / 'openai' / 'hparams.json'}: {rule}"):
        GPT2.from_pretrained(tmp_path / "openai")
    GPT2.from_pretrained(saved_tiny).save(str(tmp_path / "m.keras"))
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    parts["config.json"] = parts["config.json"].replace(b'"n_head": 2', b'"n_head": 3')
    with zipfile.ZipFile(tmp_path / "bad.keras", "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match=f"{tmp_path / 'bad.keras'}: .*{rule}"):
        GPT2.from_pretrained(str(tmp_path / "bad.keras"))
    with pytest.raises(ValueError, match=f"{saved_tiny / 'config.json'}: {rule}"):
        _load_with_config(saved_tiny, n_head=3)
    with pytest.raises(ValueError, match=f"{saved_tiny / 'config.json'}: unsupported activation_function 'swish'"):
        _load_with_config(saved_tiny, n_head=2, activation_function="swish")
    # A number written as a string (or NaN) would reach LayerNorm's arithmetic, far from the file: named here.
    with pytest.raises(ValueError, match=f"{saved_tiny / 'config.json'}: GPT2Config.layer_norm_epsilon must be a "
                                         "finite positive number, got '1e-5'"):
        _load_with_config(saved_tiny, activation_function="gelu_new", layer_norm_epsilon="1e-5")
    with pytest.raises(ValueError, match=f"{saved_tiny / 'config.json'}: resid_pdrop must be a number in \\[0, 1\\), "
                                         "got True"):  # (named as GPT2Config.dropout, a key the file has not)
        _load_with_config(saved_tiny, activation_function="gelu_new", resid_pdrop=True)
    # Another family's config (a local directory; Hub names are checked before download): named, not a tensor's shape.
    with pytest.raises(ValueError, match=f"{saved_tiny / 'config.json'} is the config of a 'gptj' model, not GPT-2"):
        _load_with_config(saved_tiny, activation_function="gelu_new", model_type="gptj")


def test_saving_over_an_openai_checkpoint_replaces_it(tmp_path):
    """hparams.json and model.ckpt.* left beside the new files would be loaded instead of them."""
    cfg = ODD_CONFIGS[0]
    _write_openai_checkpoint(make_hf_model(seed=3, **cfg), str(tmp_path / "m"))
    (tmp_path / "m" / "encoder.json").write_text("{}")  # what OpenAI's download has beside its checkpoint
    new = GPT2(GPT2Config(**cfg, initializer_range=0.3))
    with pytest.warns(UserWarning, match=r"removed checkpoint, encoder.json, hparams.json, model.ckpt.data-00000-of-"
                                         r"00001, model.ckpt.index$"):
        new.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]
    ids = _random_ids(cfg)
    np.testing.assert_array_equal(np.asarray(GPT2.from_pretrained(tmp_path / "m")(ids)), np.asarray(new(ids)))
    (tmp_path / "m" / "hparams.json").write_text("{}")  # two checkpoints in one directory: neither is taken
    with pytest.raises(ValueError, match="holds two checkpoints, OpenAI's .* and config.json"):
        GPT2.from_pretrained(tmp_path / "m")


def test_a_save_replaces_or_removes_files_of_a_gpt2_checkpoint_only(tmp_path, capsys):
    """convert / save_pretrained into a folder of another kind: a Keras model saved as a folder, another keras-hub
    model's preset, a project with a word list and another model's hparams.json (whose files were removed by their
    names), a folder where a checkpoint has a file (removed whole). Each is refused, and left as it was."""
    import keras_hub
    import transformers

    model = GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=16))
    keras_folder = tmp_path / "keras_folder"
    model.save(keras_folder, zipped=False)  # Keras' own folder form: config.json with a registered_name
    with pytest.raises(ValueError, match=r"keras_folder is a Keras model's folder \(tf_gpt2>GPT2; model.save"):
        GPT2.from_pretrained(keras_folder)  # (was: "lacks vocab_size, ...: not a GPT-2 config")
    bert = tmp_path / "bert"
    keras_hub.models.BertBackbone(vocabulary_size=10, num_layers=1, num_heads=1, hidden_dim=4, intermediate_dim=8,
                                  max_sequence_length=8).save_to_preset(str(bert))
    project = tmp_path / "project"
    project.mkdir()
    for name, text in (("vocab.txt", "apple\nbanana\n"), ("hparams.json", '{"model": "tacotron2"}'),
                       ("notes.md", "keep me")):
        (project / name).write_text(text)
    folder = tmp_path / "tts"
    (folder / "checkpoint" / "run1").mkdir(parents=True)
    (folder / "checkpoint" / "run1" / "model-1000.index").write_text("weeks of training")
    (folder / "hparams.json").write_text('{"model": "tacotron2"}')
    from safetensors.numpy import save_file

    weights = tmp_path / "weights"  # another model's weights alone (an earlier save's, with its save id, are replaced)
    weights.mkdir()
    save_file({"unet.conv.weight": np.zeros(3, np.float32)}, str(weights / "model.safetensors"))
    for directory, problem in (
            (weights, r"weights holds no GPT-2 checkpoint, but .*: model.safetensors\. Save into a new folder"),
            (keras_folder, r"config.json is the config of a Keras model \(tf_gpt2>GPT2\), not of a GPT-2 checkpoint"),
            (bert, r"config.json is the config of a Keras model \(keras_hub>BertBackbone\)"),
            (project, r"project holds no GPT-2 checkpoint, but files a reader would take for the model's, which "
                      r"saving it there would replace or remove: hparams.json, vocab.txt\. Save into a new folder"),
            (folder, r"tts/checkpoint is a folder, where a checkpoint has a file of that name")):
        before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
        with pytest.raises(ValueError, match=problem):
            model.save_pretrained(directory)
        assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before, directory
    # What is a GPT-2 checkpoint still is: GPT-2's own tokenizer saved first (transformers' habit), a keras-hub
    # preset saved under keras-nlp's name (which keras-hub reads), loaded and saved over.
    gpt2 = GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=16))
    gpt2.save_pretrained(tmp_path / "full")
    tokenizer_first = tmp_path / "tokenizer_first"
    transformers.AutoTokenizer.from_pretrained(tmp_path / "full").save_pretrained(tokenizer_first)
    assert "config.json" not in os.listdir(tokenizer_first)
    gpt2.save_pretrained(tokenizer_first)
    assert GPT2.from_pretrained(tokenizer_first).count_params() == gpt2.count_params()
    nlp = tmp_path / "keras_nlp"
    keras_hub.models.GPT2Backbone(vocabulary_size=91, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=32,
                                  max_sequence_length=8).save_to_preset(str(nlp))
    saved = json.loads((nlp / "config.json").read_text())
    (nlp / "config.json").write_text(json.dumps({**saved, "registered_name": "keras_nlp>GPT2Backbone"}))
    assert GPT2.from_pretrained(nlp).config.vocab_size == 91
    with pytest.warns(UserWarning, match="removed .*metadata.json, model.weights.h5"):
        GPT2.from_pretrained(nlp).save_pretrained(nlp)
    model.save(tmp_path / "m.keras")
    assert cli_main(["convert", str(tmp_path / "m.keras"), str(project)]) == 2
    assert "project holds no GPT-2 checkpoint" in capsys.readouterr().err
    (project / "hparams.json").unlink()
    (project / "vocab.txt").unlink()
    model.save_pretrained(project)  # new files only beside the notes: written
    assert (project / "notes.md").read_text() == "keep me" and GPT2.from_pretrained(project).count_params()


def test_a_dangling_link_is_said_as_one_not_taken_for_a_repo_name(tmp_path, monkeypatch):
    """A link whose disk is not mounted, named `gpt2`, loaded the Hub's gpt2 (or the cache's) without a word."""
    monkeypatch.chdir(tmp_path)
    os.symlink(tmp_path / "unmounted" / "my-gpt2", "gpt2")
    with pytest.raises(FileNotFoundError, match=f"^gpt2 is a link to {tmp_path}/unmounted/my-gpt2, which is not there"):
        GPT2.from_pretrained("gpt2")


def test_a_dangling_weights_link_is_said_not_passed_over_for_another_file(saved_tiny, tmp_path):
    """model.safetensors as a link to nothing beside a pytorch_model.bin of another model: the .bin was read."""
    torch = pytest.importorskip("torch")
    os.replace(saved_tiny / "model.safetensors", tmp_path / "moved.safetensors")
    os.symlink(tmp_path / "gone.safetensors", saved_tiny / "model.safetensors")
    other = make_hf_model(vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    torch.save(other.state_dict(), saved_tiny / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=f"model.safetensors is a link to {tmp_path}/gone.safetensors, which "
                                                "is not there"):
        GPT2.from_pretrained(saved_tiny)
    os.rename(saved_tiny / "config.json", tmp_path / "config.json")  # a config.json that is a link to nothing
    os.symlink(tmp_path / "unmounted" / "config.json", saved_tiny / "config.json")  # (was: "not a checkpoint")
    with pytest.raises(FileNotFoundError, match=f"config.json is a link to {tmp_path}/unmounted/config.json, which "
                                                "is not there"):
        GPT2.from_pretrained(saved_tiny)
    os.replace(tmp_path / "config.json", saved_tiny / "config.json")
    os.remove(saved_tiny / "model.safetensors")  # an index that is a link to nothing, beside the file it indexed
    os.replace(tmp_path / "moved.safetensors", saved_tiny / "model.safetensors")
    os.symlink(tmp_path / "gone.json", saved_tiny / "model.safetensors.index.json")
    GPT2.from_pretrained(saved_tiny)  # the single file is read, as transformers reads it


def test_two_saves_weights_or_an_untied_head_left_out_are_refused_and_linked_shards_load(saved_tiny, tmp_path):
    """transformers' sharded save over ours leaves our model.safetensors beside its index, and both it and we read
    the single file: the shards' fine-tuning was lost (its single-file save over shards removes them and leaves the
    index: that stale index is passed over, as transformers passes it). A config.json with tie_word_embeddings
    false whose weights lack lm_head.weight was given the embedding as its head (transformers: a random one). Shards
    that are links to files elsewhere (git-annex, DVC) were refused as "outside" the folder."""
    from safetensors.numpy import load_file, save_file

    ids = np.array([[1, 2, 3]])
    expected = np.asarray(GPT2.from_pretrained(saved_tiny)(ids))
    tensors = load_file(saved_tiny / "model.safetensors")
    index = {"weight_map": dict.fromkeys(tensors, "model-00001-of-00001.safetensors")}
    (saved_tiny / "model.safetensors.index.json").write_text(json.dumps(index))
    np.testing.assert_array_equal(np.asarray(GPT2.from_pretrained(saved_tiny)(ids)), expected)  # its shard is gone
    (tmp_path / "annex").mkdir()
    save_file(tensors, tmp_path / "annex" / "blob", metadata={"format": "pt"})
    os.symlink(tmp_path / "annex" / "blob", saved_tiny / "model-00001-of-00001.safetensors")
    os.utime(saved_tiny / "model.safetensors", (1e9, 1e9))  # written before the index
    with pytest.raises(ValueError, match=f"^{saved_tiny} holds both model.safetensors and the shards model.safetensors"
                                         r".index.json names: two saves' weights \(the newer: model.safetensors.index"
                                         r".json\); remove the other$"):
        GPT2.from_pretrained(saved_tiny)
    os.remove(saved_tiny / "model.safetensors")
    np.testing.assert_array_equal(np.asarray(GPT2.from_pretrained(saved_tiny)(ids)), expected)  # the linked shard
    config = json.loads((saved_tiny / "config.json").read_text())
    (saved_tiny / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(ValueError, match=f"^{saved_tiny / 'config.json'} sets tie_word_embeddings false \\(an LM "
                                         f"head of its own\\), but {saved_tiny}'s weights have no lm_head.weight$"):
        GPT2.from_pretrained(saved_tiny)
    save_file({**tensors, "lm_head.weight": tensors["transformer.wte.weight"]}, tmp_path / "annex" / "blob")
    np.testing.assert_array_equal(np.asarray(GPT2.from_pretrained(saved_tiny)(ids)), expected)  # a head equal to wte


def test_names_and_overrides_that_are_not_the_files_fault_are_said_as_such(saved_tiny, tmp_path, monkeypatch):
    from safetensors.numpy import load_file, save_file

    # A torch.compile'd model's state dict: every name under "_orig_mod." ("the tensors hold 0 layers")
    tensors = load_file(saved_tiny / "model.safetensors")
    save_file({"_orig_mod." + k: v for k, v in tensors.items()}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    shutil.copy(saved_tiny / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"none of its \d+ tensors has a GPT-2 name .* one is '_orig_mod\.transformer"
                                         r"\.h\.0\.attn\.c_attn\.bias' .*torch.compile's '_orig_mod.'"):
        GPT2.from_pretrained(tmp_path)
    # Overrides the caller got wrong were said as the config.json's fault
    with pytest.raises(ValueError, match=r"^from_pretrained's config overrides: .*'dropuot'"):
        GPT2.from_pretrained(saved_tiny, dropuot=0.1)
    with pytest.raises(ValueError, match=r"^from_pretrained's config overrides: GPT2Config.dropout must be in "
                                         r"\[0, 1\), got 1.5"):
        GPT2.from_pretrained(saved_tiny, dropout=1.5)
    with pytest.raises(ValueError, match="revision='main' is for a Hugging Face repo; gpt2_base_en is a keras-hub "
                                         "preset, which has none \\(the Hugging Face repo 'gpt2' holds the same"):
        GPT2.from_pretrained("gpt2_base_en", revision="main")
    # A folder named as a Hub repo is read before the Hub: said where it holds no checkpoint
    monkeypatch.chdir(tmp_path)
    os.mkdir("gpt2")
    with pytest.raises(FileNotFoundError, match=r"the folder gpt2 is read before the Hub: for the Hugging Face repo, "
                                                r"write hf://gpt2"):
        GPT2.from_pretrained("gpt2")


def _save_openai(directory, tensors, config):
    """tensors (GPT-2's names) as an OpenAI checkpoint of `config`, its conv1d kernels [1, in, out]."""
    os.makedirs(directory)
    with open(os.path.join(directory, "hparams.json"), "w") as f:
        json.dump(dict(n_vocab=config.vocab_size, n_ctx=config.n_positions, n_embd=config.n_embd,
                       n_head=config.n_head, n_layer=config.n_layer), f)
    names = [openai_name(name) for name in tensors]
    values = [tf.constant(v[None] if v.ndim == 2 and not n.startswith("w") else v) for n, v in tensors.items()]
    tf.raw_ops.SaveV2(prefix=os.path.join(directory, "model.ckpt"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=values)
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model.ckpt"\n')


def test_openai_checkpoints_in_bfloat16_load_and_odd_ones_are_refused(tmp_path):
    """bfloat16 weights (numpy's kind "V") were refused as "not floating point", in OpenAI's format and from a
    keras-hub backbone; a conv1d kernel of [2, in, out] lost its second half; a `checkpoint` file naming another
    folder's weights (a copied run keeps its absolute paths) read those: this folder's files of that name are read."""
    import keras_hub
    import ml_dtypes

    from tf_gpt2.checkpoints import checkpoint_tensors

    model = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=100, n_positions=16))
    tensors = checkpoint_tensors(model)
    rounded = {name: v.astype(ml_dtypes.bfloat16) for name, v in tensors.items()}
    _save_openai(tmp_path / "bf16", rounded, model.config)
    loaded = weight_table(GPT2.from_pretrained(tmp_path / "bf16"))
    for name, value in rounded.items():
        np.testing.assert_array_equal(np.asarray(loaded[name]), value.astype(np.float32), err_msg=name)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=91, num_layers=1, num_heads=2, hidden_dim=8,
                                             intermediate_dim=32, max_sequence_length=8, dtype="bfloat16")
    assert GPT2.from_pretrained(backbone).config.vocab_size == 91

    kernel = tensors["h.0.attn.c_attn.weight"]
    stacked = {**tensors, "h.0.attn.c_attn.weight": np.stack([kernel, kernel + 1])}  # [2, in, out]
    _save_openai(tmp_path / "3d", stacked, model.config)
    with pytest.raises(ValueError, match=r"tensor 'model/h0/attn/c_attn/w' has shape \(2, \d+, \d+\), expected "
                                         r"\[1, in, out\]"):
        GPT2.from_pretrained(tmp_path / "3d")

    _save_openai(tmp_path / "a", tensors, model.config)
    other = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=100, n_positions=16, initializer_range=0.3))
    _save_openai(tmp_path / "b", checkpoint_tensors(other), other.config)
    # A copied run's `checkpoint` names the folder it was copied from (TF1's Saver writes absolute paths): this
    # folder's files of that name are read, never the other folder's
    (tmp_path / "b" / "checkpoint").write_text(f'model_checkpoint_path: "{tmp_path / "a" / "model.ckpt"}"\n')
    np.testing.assert_array_equal(np.asarray(weight_table(GPT2.from_pretrained(tmp_path / "b"))["wte.weight"]),
                                  checkpoint_tensors(other)["wte.weight"])
    (tmp_path / "b" / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')  # its own: read
    np.testing.assert_array_equal(np.asarray(weight_table(GPT2.from_pretrained(tmp_path / "b"))["wte.weight"]),
                                  checkpoint_tensors(other)["wte.weight"])
    # A `checkpoint` file naming a step whose files are not there: TensorFlow logs it and finds none, and the one
    # checkpoint that is there (another step's weights) was read without a word.
    (tmp_path / "b" / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-2000"\n')
    with pytest.raises(FileNotFoundError, match=f"b/checkpoint names {tmp_path}/b/model.ckpt-2000, whose files "
                                                r"\(.index, .data-\*\) are not in"):
        GPT2.from_pretrained(tmp_path / "b")
    (tmp_path / "b" / "checkpoint").write_text(f'model_checkpoint_path: "{tmp_path / "a" / "model.ckpt-7"}"\n')
    with pytest.raises(FileNotFoundError, match="whose files .* are not in"):  # (they are in a/: not read)
        GPT2.from_pretrained(tmp_path / "b")


def test_saving_a_character_model_over_a_gpt2_one_leaves_no_gpt2_tokenizer(tmp_path):
    """transformers' AutoTokenizer would read GPT-2's vocabulary beside the character model; its generate would
    take the old generation defaults."""
    GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=16)).save_pretrained(tmp_path / "m")
    for name in ("tokenizer.json", "generation_config.json"):  # what transformers' own saves add
        (tmp_path / name).write_text("{}")
        os.replace(tmp_path / name, tmp_path / "m" / name)
    chars = GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=65, n_positions=16,
                                        characters=[chr(32 + i) for i in range(65)]))
    with pytest.warns(UserWarning, match="removed generation_config.json, merges.txt, special_tokens_map.json, "
                                         "tokenizer.json, tokenizer_config.json, vocab.json"):
        chars.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]
    assert GPT2.from_pretrained(tmp_path / "m").config.characters == chars.config.characters
    # A folder whose config.json is no checkpoint's (a project's settings, beside its own tokenizer.json) is not
    # written over: convert replaced that config.json and removed the tokenizer.json as "another checkpoint's".
    (tmp_path / "project").mkdir()
    for name, text in (("config.json", '{"epochs": 3}'), ("tokenizer.json", "{}")):
        (tmp_path / "project" / name).write_text(text)
    with pytest.raises(ValueError, match=r"project/config.json is not a checkpoint's config.json .* would replace it"):
        chars.save_pretrained(tmp_path / "project")
    assert sorted(os.listdir(tmp_path / "project")) == ["config.json", "tokenizer.json"]
    assert (tmp_path / "project" / "config.json").read_text() == '{"epochs": 3}'
    (tmp_path / "project" / "config.json").write_text('{"model_type": "bert"}')  # another model's: not replaced
    with pytest.raises(ValueError, match=r"project/config.json is the config of a 'bert' model"):
        chars.save_pretrained(tmp_path / "project")
    assert sorted(os.listdir(tmp_path / "project")) == ["config.json", "tokenizer.json"]
    older = {k: v for k, v in json.loads((tmp_path / "m" / "config.json").read_text()).items()
             if k not in ("model_type", "architectures")}  # an older save, read as GPT-2's: saved over as one
    (tmp_path / "m" / "config.json").write_text(json.dumps(older))
    chars.save_pretrained(tmp_path / "m")


def test_a_checkpoint_with_a_tokenizer_of_its_own_is_refused_by_its_file_and_left_as_it_is(tmp_path, capsys):
    """GPT-2's BPE would read its text as other ids than it was trained on: generate, eval and fine-tuning would go
    wrong without a word, and convert / save_pretrained would write GPT-2's tokenizer over its own."""
    transformers = pytest.importorskip("transformers")
    model = GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=16))
    model.save_pretrained(tmp_path / "gpt2")  # GPT-2's own tokenizer files: loads
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "gpt2")
    theirs.add_special_tokens({"pad_token": "<|pad|>"})  # a token added past GPT-2's 50,257: text never becomes it
    theirs.save_pretrained(tmp_path / "gpt2")  # adds tokenizer.json, merges as pairs
    assert GPT2.from_pretrained(tmp_path / "gpt2").count_params() == model.count_params()

    vocabulary = json.loads((tmp_path / "gpt2" / "vocab.json").read_text(encoding="utf-8"))
    tokens = list(vocabulary)
    swapped = {**vocabulary, tokens[300]: vocabulary[tokens[301]], tokens[301]: vocabulary[tokens[300]]}
    merges = (tmp_path / "gpt2" / "merges.txt").read_text(encoding="utf-8")
    for i, (case, edit, problem) in enumerate((
            ("vocab.json", lambda d: (d / "vocab.json").write_text(json.dumps(swapped)), "is not GPT-2's vocabulary"),
            ("merges.txt", lambda d: (d / "merges.txt").write_text("\n".join(merges.split("\n")[:-2])),
             "is not GPT-2's merges"),
            ("tokenizer.json", lambda d: [os.remove(d / n) for n in ("vocab.json", "merges.txt")] and (
                d / "tokenizer.json").write_text(json.dumps({**json.loads((d / "tokenizer.json").read_text()),
                                                             "model": {"type": "Unigram", "vocab": []}})),
             "is not GPT-2's BPE"),
            ("tokenizer.json", lambda d: (d / "tokenizer.json").write_text(json.dumps({  # " Hello" for "Hello"
                **json.loads((d / "tokenizer.json").read_text()),
                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                  "use_regex": True}})), "splits text otherwise than GPT-2's BPE"),
            ("tokenizer.json", lambda d: (d / "tokenizer.json").write_text(json.dumps({
                **json.loads((d / "tokenizer.json").read_text()), "normalizer": {"type": "Lowercase"}})),
             "splits text otherwise than GPT-2's BPE"),
            ("tokenizer.json", lambda d: (d / "tokenizer.json").write_text(json.dumps({  # a BOS before every text
                **json.loads((d / "tokenizer.json").read_text()), "post_processor": {
                    "type": "TemplateProcessing", "pair": [], "single": [
                        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
                    "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [50256],
                                                         "tokens": ["<|endoftext|>"]}}}})),
             "adds a token to every text"),
            ("tokenizer_config.json", lambda d: (d / "tokenizer_config.json").write_text(json.dumps({
                **json.loads((d / "tokenizer_config.json").read_text()), "add_prefix_space": True})),
             "sets add_prefix_space"),
            ("tokenizer_config.json", lambda d: (d / "tokenizer_config.json").write_text(json.dumps({
                **json.loads((d / "tokenizer_config.json").read_text()), "add_bos_token": True})),
             "sets add_bos_token"),
            ("vocab.json", lambda d: os.remove(d / "merges.txt"), "has no merges.txt beside it"),
            ("spiece.model", lambda d: (d / "spiece.model").write_bytes(b"\x0a"), "is a tokenizer of another kind"))):
        other = tmp_path / f"case{i}"
        shutil.copytree(tmp_path / "gpt2", other)
        edit(other)
        before = {name: (other / name).read_bytes() for name in os.listdir(other)}
        with pytest.raises(ValueError, match=f"{re.escape(str(other / case))} {problem}.*: tf_gpt2 reads text"):
            GPT2.from_pretrained(other)
        assert cli_main(["convert", str(other), str(other) + "-hf"]) == 2  # refused, nothing written
        assert f"{other / case} {problem}" in capsys.readouterr().err
        assert {name: (other / name).read_bytes() for name in os.listdir(other)} == before
        assert not os.path.exists(str(other) + "-hf")
    bom = tmp_path / "bom"  # GPT-2's files as a Windows editor saves them, a BOM first: still GPT-2's tokens (only
    shutil.copytree(tmp_path / "gpt2", bom)  # compared here); they were refused as "not GPT-2's merges"
    for name in ("vocab.json", "merges.txt"):
        (bom / name).write_bytes(b"\xef\xbb\xbf" + (bom / name).read_bytes())
    assert GPT2.from_pretrained(bom).count_params() == model.count_params()


def test_tokens_added_to_the_models_ids_are_refused(tmp_path, capsys):
    """A chat fine-tune's markers (`<|im_start|>` = 50257) are ids of the model that GPT-2's BPE never gives: text
    would reach it as pieces, and its end-of-turn could never be asked for. Each file that adds them is named; a
    token added past the model's ids (a padding token of the tokenizer alone) is not refused."""
    transformers = pytest.importorskip("transformers")
    chat = tmp_path / "chat"
    GPT2(GPT2Config(vocab_size=50259, n_positions=16, n_embd=32, n_layer=1, n_head=2)).save_pretrained(chat)
    theirs = transformers.AutoTokenizer.from_pretrained(chat)
    theirs.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    theirs.save_pretrained(chat)
    shutil.copytree(chat, tmp_path / "gpt2")
    (chat / "added_tokens.json").write_text(json.dumps({"<|im_start|>": 50257, "<|im_end|>": 50258}))
    (chat / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": ["<|im_start|>"]}))
    for name in ("tokenizer.json", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json"):
        added = f"{chat / name} adds tokens to GPT-2's: '<|im_start|>' = 50257"
        with pytest.raises(ValueError, match=re.escape(added)):
            GPT2.from_pretrained(chat)
        os.remove(chat / name)
    assert GPT2.from_pretrained(chat).config.vocab_size == 50259  # GPT-2's vocab.json and merges.txt remain
    padded = tmp_path / "padded"  # the usual fine-tune: a padding token added, the embeddings resized to hold it
    GPT2(GPT2Config(vocab_size=50258, n_positions=16, n_embd=32, n_layer=1, n_head=2)).save_pretrained(padded)
    theirs = transformers.AutoTokenizer.from_pretrained(padded)
    theirs.add_special_tokens({"pad_token": "[PAD]"})
    theirs.add_special_tokens({"additional_special_tokens": ["<sep>"]})  # then one for the tokenizer alone: 50258,
    theirs.save_pretrained(padded)                                      # past the model's ids, not a guessed 50257
    assert theirs.convert_tokens_to_ids(["[PAD]", "<sep>"]) == [50257, 50258]
    assert GPT2.from_pretrained(padded).config.vocab_size == 50258
    small = tmp_path / "small"  # the same tokenizer files, the ids past a model of GPT-2's 50,257
    GPT2(GPT2Config(vocab_size=50257, n_positions=16, n_embd=32, n_layer=1, n_head=2)).save_pretrained(small)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tmp_path / "gpt2" / name, small / name)
    (small / "added_tokens.json").write_text(json.dumps({"<|im_start|>": 50257, "<|im_end|>": 50258}))
    assert GPT2.from_pretrained(small).config.vocab_size == 50257


def test_gpt2s_own_tokenizer_files_in_every_layout_are_gpt2s(tmp_path):
    """No false alarm: OpenAI's encoder.json / vocab.bpe, Hugging Face's files (CRLF ones too), a transformers
    tokenizer.json alone, keras-hub's preset assets and tokenizer.json (a Keras config, which may set
    add_prefix_space: said)."""
    keras_hub = pytest.importorskip("keras_hub")
    from tf_gpt2.tokenizer import default_vocab_files, other_tokenizer

    encoder_json, vocab_bpe = default_vocab_files()
    for layout, names in (("openai", ("encoder.json", "vocab.bpe")), ("hf", ("vocab.json", "merges.txt"))):
        (tmp_path / layout).mkdir()
        for source, name in zip((encoder_json, vocab_bpe), names):
            shutil.copyfile(source, tmp_path / layout / name)
    (tmp_path / "crlf").mkdir()
    shutil.copyfile(encoder_json, tmp_path / "crlf" / "vocab.json")
    (tmp_path / "crlf" / "merges.txt").write_bytes(open(vocab_bpe, "rb").read().replace(b"\n", b"\r\n"))
    (tmp_path / "tokenizer-json").mkdir()
    from tf_gpt2.tokenizer import hf_tokenizer_json

    (tmp_path / "tokenizer-json" / "tokenizer.json").write_text(hf_tokenizer_json(), encoding="utf-8")
    (tmp_path / "from-tiktoken").mkdir()  # as transformers converts a tiktoken file: GPT-2's regex, then bytes
    (tmp_path / "from-tiktoken" / "tokenizer.json").write_text(json.dumps({
        **json.loads(hf_tokenizer_json()), "normalizer": {"type": "Sequence", "normalizers": []},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "behavior": "Isolated", "invert": False,
             "pattern": {"Regex": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"}},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}}))
    assets = tmp_path / "keras-hub" / "assets" / "tokenizer"
    assets.mkdir(parents=True)
    keras_hub.tokenizers.GPT2Tokenizer(vocabulary=encoder_json, merges=vocab_bpe).save_assets(str(assets))
    for prefix in (False, True):
        keras_hub.tokenizers.GPT2Tokenizer(vocabulary=encoder_json, merges=vocab_bpe,
                                           add_prefix_space=prefix).save_to_preset(str(tmp_path / f"prefix-{prefix}"))
    for layout in ("openai", "hf", "crlf", "tokenizer-json", "from-tiktoken", "keras-hub", "prefix-False"):
        assert other_tokenizer(str(tmp_path / layout)) is None, layout
    assert other_tokenizer(str(tmp_path / "prefix-True")) == (
        f'{tmp_path / "prefix-True" / "tokenizer.json"} sets add_prefix_space (keras-hub then reads "Hello" as '
        '" Hello")')


def test_a_peft_adapter_beside_the_weights_is_refused_on_load_and_removed_by_a_save(saved_tiny, tmp_path):
    """transformers, with peft installed, applies a LoRA adapter saved beside a checkpoint; tf_gpt2 read the weights
    alone and said nothing (logits 0.34 apart in a user's trial). The load is refused; a save into that folder
    removes the adapter (left there, transformers would apply the stale adapter to the new weights)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ids = np.array([[1, 2, 3, 4]])
    ours = GPT2.from_pretrained(saved_tiny)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(saved_tiny),
                             LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    for name, weight in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.5)
    adapted.peft_config["default"].base_model_name_or_path = str(saved_tiny)
    adapted.save_pretrained(saved_tiny)
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(saved_tiny)(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(theirs - np.asarray(ours(ids))).max() > 0.01  # transformers applies it
    with pytest.raises(ValueError, match=f"^{saved_tiny} holds a PEFT adapter \\(adapter_config.json\\), which "
                                         "transformers with peft applies to the model and tf_gpt2 does not: merge it"):
        GPT2.from_pretrained(saved_tiny)
    (tmp_path / "adapter").mkdir()  # the adapter's own folder, without the model: said as one, not "no checkpoint"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(saved_tiny / name, tmp_path / "adapter" / name)
    with pytest.raises(ValueError, match=f"^{tmp_path}/adapter holds a PEFT adapter"):
        GPT2.from_pretrained(tmp_path / "adapter")
    with pytest.warns(UserWarning, match="removed adapter_config.json, adapter_model.safetensors"):
        ours.save_pretrained(saved_tiny)
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(saved_tiny)(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, np.asarray(ours(ids)), atol=1e-5)


def test_transformers_other_names_and_true_or_false_settings_are_read_as_transformers_reads_them(saved_tiny):
    """transformers reads hidden_size, num_hidden_layers, num_attention_heads and max_position_embeddings as GPT-2's
    sizes, over GPT-2's own names: a config.json whose two names of the head count disagreed loaded with n_head's
    (logits 0.6 from transformers'), and one with the other names alone was "lacks n_embd". A true/false setting
    given as 0 or null (`scale_attn_weights`) loaded as true."""
    transformers = pytest.importorskip("transformers")
    ids = np.array([[1, 2, 3, 4]])
    expected = np.asarray(GPT2.from_pretrained(saved_tiny)(ids))
    config = json.loads((saved_tiny / "config.json").read_text())
    other_names = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
                   "n_positions": "max_position_embeddings"}
    renamed = {other_names.get(k, k): v for k, v in config.items() if k != "n_ctx"}
    (saved_tiny / "config.json").write_text(json.dumps(renamed))
    assert transformers.GPT2Config.from_pretrained(saved_tiny).n_head == config["n_head"]
    np.testing.assert_array_equal(np.asarray(GPT2.from_pretrained(saved_tiny)(ids)), expected)
    (saved_tiny / "config.json").write_text(json.dumps({**config, "hidden_size": 16.0,  # one value; none given
                                                        "max_position_embeddings": None}))
    np.testing.assert_array_equal(np.asarray(GPT2.from_pretrained(saved_tiny)(ids)), expected)
    (saved_tiny / "config.json").write_text(json.dumps({**config, "num_attention_heads": 1}))
    assert transformers.GPT2Config.from_pretrained(saved_tiny).n_head == 1  # the other name is the one it takes
    with pytest.raises(ValueError, match=f"^{saved_tiny}/config.json gives n_head=2 and num_attention_heads=1, two "
                                         r"names of one setting \(transformers reads num_attention_heads\)"):
        GPT2.from_pretrained(saved_tiny)
    for key, value, said in (("scale_attn_weights", 0, "0"), ("scale_attn_weights", None, "null"),
                             ("scale_attn_by_inverse_layer_idx", "false", '"false"'),
                             ("tie_word_embeddings", None, "null")):
        (saved_tiny / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=f"config.json: {key} must be true or false, got {said}$"):
            GPT2.from_pretrained(saved_tiny)
    (saved_tiny / "config.json").write_text(json.dumps({**config, "scale_attn_weights": True,
                                                        "tie_word_embeddings": True}))
    np.testing.assert_array_equal(np.asarray(GPT2.from_pretrained(saved_tiny)(ids)), expected)


def test_a_checkpoints_own_end_token_is_said_where_generate_stops_elsewhere(saved_tiny, tmp_path):
    """transformers' generate stops at the checkpoint's eos_token_id (config.json's, which transformers' save
    writes; a Hub download fetches no generation_config.json); tf_gpt2's at <|endoftext|> where the ids are GPT-2's,
    else nowhere: a fine-tune that ends its texts with "\n"
    (198) loaded without a word and wrote past it. GPT-2's own 50256, and an id past a tiny model's vocabulary
    (transformers' default), say nothing."""
    model = GPT2(GPT2Config(vocab_size=50257, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["eos_token_id"] == 50256
    for ckpt, eos in ((tmp_path / "m", 50256), (saved_tiny, 50256), (saved_tiny, None)):
        (ckpt / "config.json").write_text(json.dumps({**json.loads((ckpt / "config.json").read_text()),
                                                      "eos_token_id": eos}))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            GPT2.from_pretrained(ckpt)
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "eos_token_id": 198}))
    with pytest.warns(UserWarning, match=rf"^{tmp_path}/m/config.json ends a text with token 198, and generate stops "
                                         r"after token 50256 \(<\|endoftext\|>\) unless given stop_ids=\[198\]"):
        GPT2.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "eos_token_id": [198, 50256]}))
    with pytest.warns(UserWarning, match=r"config.json ends a text with token 198 or 50256, .*stop_ids=\[198, 50256\]"):
        GPT2.from_pretrained(tmp_path / "m")
    (saved_tiny / "config.json").write_text(json.dumps({**json.loads((saved_tiny / "config.json").read_text()),
                                                        "eos_token_id": 7}))
    with pytest.warns(UserWarning, match=r"ends a text with token 7, and generate stops nowhere unless given "
                                         r"stop_ids=\[7\]; tf-gpt2 generate stops nowhere, and save_pretrained "
                                         "writes eos_token_id null$"):
        GPT2.from_pretrained(saved_tiny)
