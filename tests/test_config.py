import numpy as np
import pytest

from tf_gpt2 import GPT2, PRESETS, GPT2Config


def test_config_round_trips_through_json_and_a_file(tmp_path):
    cfg = GPT2Config.from_preset("gpt2-tiny", vocab_size=321, dropout=0.1, norm_position="post")
    assert GPT2Config.from_json(cfg.to_json()) == cfg
    cfg.save(tmp_path / "c.json")
    assert GPT2Config.load(tmp_path / "c.json") == cfg


def test_presets_have_gpt2_shapes():
    assert GPT2Config.from_preset("gpt2").num_params() == 124_439_808
    assert GPT2Config.from_preset("gpt2").num_params(non_embedding=True) == 123_653_376  # nanoGPT's "123.65M"
    assert GPT2Config.from_preset("gpt2-medium").num_params() == 354_823_168
    assert GPT2Config.from_preset("gpt2-large").num_params() == 774_030_080
    assert GPT2Config.from_preset("gpt2-xl").num_params() == 1_557_611_200
    assert {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"} <= set(PRESETS)


@pytest.mark.parametrize("preset, multiple", [("gpt2-tiny", 1), ("gpt2-mini", 1), ("gpt2-tiny", 64)])
def test_num_params_matches_the_built_model(preset, multiple):
    cfg = GPT2Config.from_preset(preset, vocab_multiple=multiple)
    assert GPT2(cfg).count_params() == cfg.num_params()
    assert cfg.padded_vocab_size == (50257 if multiple == 1 else 50304)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=100, n_head=3), "divisible by n_head"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(vocab_size=2.5), "vocab_size must be a positive integer"),
        (dict(dropout=1.0), "dropout"),
        (dict(norm_position="middle"), "norm_position"),
        (dict(vocab_multiple=0), "vocab_multiple must be a positive integer"),
        (dict(layer_norm_epsilon=float("nan")), "layer_norm_epsilon must be a finite positive number, got nan"),
        (dict(layer_norm_epsilon=0), "layer_norm_epsilon must be a finite positive number, got 0"),
        (dict(initializer_range="0.02"), "initializer_range must be a finite non-negative number, got '0.02'"),
        (dict(remat="no"), "remat must be true or false, got 'no'"),
        (dict(activation="swish"), "activation must be one of .*, got 'swish'"),  # not first when a model is built
        (dict(vocab_multiple=2**40), "vocab_multiple must be at most 65536"),  # terabytes of padding rows
    ],
)
def test_bad_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPT2Config(**kwargs)


def test_the_configs_activations_are_the_layers():
    from tf_gpt2 import config, layers

    assert set(config.ACTIVATIONS) == set(layers.ACTIVATIONS)


def test_unknown_presets_and_fields_are_named():
    with pytest.raises(ValueError, match="unknown preset 'gpt5'"):
        GPT2Config.from_preset("gpt5")
    with pytest.raises(ValueError, match="unknown GPT2Config fields: \\['n_ctxx'\\]"):
        GPT2Config.from_dict({"n_ctxx": 3})


def test_dropout_splits_as_gpt2_does_and_old_configs_keep_their_meaning(tmp_path):
    """`dropout` is the rate of GPT-2's three dropouts unless one is set apart; a config saved before the split (one
    `dropout`) means what it meant; a Hugging Face config.json written and read back keeps each rate, and transformers
    reads the same three."""
    import json

    old = {k: v for k, v in GPT2Config.from_preset("gpt2-tiny", dropout=0.1).to_dict().items()
           if not k.endswith("_pdrop")}
    cfg = GPT2Config.from_dict(old)
    assert [cfg.dropout_rate(n) for n in ("embd_pdrop", "resid_pdrop", "attn_pdrop")] == [0.1, 0.1, 0.1]
    split = GPT2Config.from_preset("gpt2-tiny", vocab_size=50, dropout=0.1, attn_pdrop=0.0)
    GPT2(split).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert (written["embd_pdrop"], written["resid_pdrop"], written["attn_pdrop"]) == (0.1, 0.1, 0.0)
    back = GPT2.from_pretrained(str(tmp_path)).config
    assert (back.dropout, back.embd_pdrop, back.attn_pdrop) == (0.1, None, 0.0)
    assert GPT2.from_pretrained(str(tmp_path), dropout=0.2).config.dropout_rate("embd_pdrop") == 0.2
    with pytest.raises(ValueError, match="attn_pdrop must be in"):
        GPT2Config(attn_pdrop=1.5)
    with pytest.raises(ValueError, match=r"GPT2Config.dropout must be in \[0, 1\), got None"):
        GPT2Config(dropout=None)  # (a rate of its own may be None: `dropout`'s)
    written["resid_pdrop"] = None  # null in a config.json failed in Keras' Dropout, naming nothing
    (tmp_path / "config.json").write_text(json.dumps(written))
    with pytest.raises(ValueError, match=r"config.json: resid_pdrop must be a number in \[0, 1\), got null"):
        GPT2.from_pretrained(str(tmp_path))


def test_a_dropout_override_sets_all_three_rates_and_numpy_rates_are_numbers(tmp_path):
    """`--dropout` / `from_pretrained(..., dropout=...)` over a checkpoint with its own attention rate sets all three
    (a checkpoint's attn_pdrop 0.1 does not outlive --dropout 0); a rate given beside it stays; numpy floats are
    rates like any other."""
    import dataclasses
    import json

    import numpy as np

    from tf_gpt2.config import with_overrides

    split = GPT2Config.from_preset("gpt2-tiny", vocab_size=50, dropout=0.0, attn_pdrop=0.1)
    rates = lambda c: [c.dropout_rate(n) for n in ("embd_pdrop", "resid_pdrop", "attn_pdrop")]  # noqa: E731
    assert rates(dataclasses.replace(split, **with_overrides({}, {"dropout": 0.2}))) == [0.2, 0.2, 0.2]
    assert rates(dataclasses.replace(split, **with_overrides({}, {"dropout": 0.2, "attn_pdrop": 0.0}))) == [0.2, 0.2, 0]
    GPT2(split).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["attn_pdrop"] == 0.1
    assert rates(GPT2.from_pretrained(str(tmp_path), dropout=0.0).config) == [0.0, 0.0, 0.0]
    assert GPT2Config(dropout=np.float32(0.25)).dropout == 0.25
    numpy = GPT2Config(n_layer=np.int64(2), loss_chunk=np.int32(8), remat=np.bool_(True))  # as numbers and bools
    assert (numpy.n_layer, numpy.loss_chunk, numpy.remat) == (2, 8, True) and type(numpy.n_layer) is int
    assert GPT2Config.from_json(numpy.to_json()) == numpy


def test_a_field_set_later_is_checked_and_a_built_models_config_stays_its_own():
    """Checks ran at construction only: `cfg.dropout = 5` or a misspelt `cfg.n_layers = 2` went in unsaid, and a
    built model's `model.config.n_positions = 64` left a model whose config no longer described it (an XLA call
    clamped positions, `save` wrote a file that did not load)."""
    import dataclasses

    from tf_gpt2 import GPT2

    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32)
    for name, value, error, message in (
            ("dropout", 5, ValueError, r"GPT2Config.dropout must be in \[0, 1\), got 5"),
            ("layer_norm_epsilon", -1.0, ValueError, "layer_norm_epsilon must be a finite positive number"),
            ("n_head", 5, ValueError, r"n_embd \(16\) must be divisible by n_head \(5\)"),
            ("n_layers", 2, AttributeError, "GPT2Config has no field 'n_layers'; its fields: vocab_size, ")):
        with pytest.raises(error, match=message):
            setattr(cfg, name, value)
    cfg.dropout, cfg.n_positions = 0.1, np.int64(48)  # checked and taken, as the constructor takes them
    assert cfg == GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=48, dropout=0.1)
    assert type(cfg.n_positions) is int
    model = GPT2(cfg)
    cfg.dropout = 0.2  # the config it was built from stays the caller's
    assert model.config.dropout == 0.1
    with pytest.raises(AttributeError, match=r"GPT2Config.n_positions of a built model does not change: .* build "
                                             r"another, GPT2\(dataclasses.replace\(model.config, n_positions=...\)\)"):
        model.config.n_positions = 64
    assert model.config.n_positions == 48
    assert dataclasses.replace(model.config, n_positions=64).n_positions == 64  # a new config, for a new model
    chars = GPT2(GPT2Config(vocab_size=3, n_positions=8, n_layer=1, n_head=1, n_embd=4))
    chars.config.characters = ["a", "b", "c"]  # what its ids mean: no weight has their shape
    with pytest.raises(ValueError, match="GPT2Config.characters must be 3 characters"):
        chars.config.characters = ["a"]
    assert chars.config.characters == ["a", "b", "c"]
