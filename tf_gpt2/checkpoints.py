"""Read and write GPT-2 weights: Hugging Face (safetensors, or pickled `pytorch_model.bin` and its shards, read
with `torch.load(weights_only=True)`), OpenAI's TF checkpoints, keras-hub's GPT2Backbone, and `.keras` files.

Our layer names follow the GPT-2 checkpoints (`h.0.attn.c_attn`, `ln_f`, ...), so every
format is one short name mapping onto `weight_table(model)`. Each reader returns a config and
its tensors under those names; `GPT2.from_pretrained` builds the model from them (this module
does not import the model: it works on any model with GPT-2's layer names).

>>> tensor_names(n_layer=1)[:4]
['wte.weight', 'wpe.weight', 'h.0.ln_1.weight', 'h.0.ln_1.bias']
>>> expected_shapes(GPT2Config(vocab_size=10, n_positions=8, n_embd=4, n_layer=1, n_head=2))["h.0.mlp.c_fc.weight"]
(4, 16)
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import warnings
import zipfile
from typing import Any, Collection, Iterator

import keras
import numpy as np

from tf_gpt2.checks import is_integer
from tf_gpt2.config import DROPOUTS, GPT2Config, is_rate, with_overrides
from tf_gpt2.data import warn_of_a_folder_of_texts
from tf_gpt2.devices import host_array
from tf_gpt2.files import index_shards, json_writer, make_folders, read_json, refuse_dangling_link, write_together
from tf_gpt2.formats import KERAS_HUB_GPT2, PEFT_ADAPTER_FILES
from tf_gpt2.tokenizer import ENDOFTEXT, OTHER_KINDS, VOCAB_SIZE, default_vocab_files, end_of_text_id, other_tokenizer

BLOCK_LAYERS = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
RESIDUAL_SCALES = ("attn_scale", "mlp_scale")  # scalars of blocks with learned_residual_scale, not GPT-2's
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
                  "silu": "silu"}
# Buffers some HF checkpoints carry that are not weights (the causal mask, its fill value).
HF_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


Tensors = dict[str, np.ndarray]  # GPT-2 checkpoint name -> array


def tensor_names(n_layer: int) -> list[str]:
    """Every weight's GPT-2 checkpoint name, in `weight_table` order."""
    layers = [f"h.{i}.{path}" for i in range(n_layer) for path in BLOCK_LAYERS] + ["ln_f"]
    return ["wte.weight", "wpe.weight"] + [f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")]


@contextlib.contextmanager
def adapters_merged_as_stored(model: keras.Model) -> Iterator[None]:
    """Within it, a LoRA-adapted Dense's `kernel` (what Keras' save, `with_dtype` and the checkpoint writers read)
    adds its adapters' update in the dtype the layer stores its weights in: Keras adds it in the compute dtype, and
    under mixed_bfloat16 every adapted float32 kernel came out rounded to bfloat16. (Quantized layers keep Keras'
    own merge.)"""
    adapted = [layer for layer in model._flatten_layers() if getattr(layer, "lora_enabled", False)
               and not layer.quantization_mode]
    policies = [layer.dtype_policy for layer in adapted]
    for layer, policy in zip(adapted, policies):
        layer.dtype_policy = policy.variable_dtype
    try:
        yield
    finally:
        for layer, policy in zip(adapted, policies):
            layer.dtype_policy = policy


def refuse_other_shapes(model: keras.Model, path: str) -> None:
    """Refuse a `.weights.h5` saved from a model of other shapes than `model`'s (more layers, another context or
    vocabulary, another width), which Keras' `load_weights` loads in part (a file of more layers: silently) or
    refuses as "received 0 variables". LoRA adapters, dropout's random state and the optimizer's (a compiled model
    saves it too) are left out of both sides: a file holds adapters merged, no random state where its dropout was 0,
    and Keras loads an optimizer's state as it will."""
    import collections

    import h5py

    def counted(shapes: list[tuple[int, ...]]) -> collections.Counter:
        return collections.Counter(tuple(int(n) for n in shape) for shape in shapes)

    stored: list[tuple[int, ...]] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: stored.append(item.shape) if isinstance(item, h5py.Dataset)
                     and "seed_generator" not in name and not name.startswith("optimizer/") else None)
    ours = [v.shape for v in model.weights if "lora_kernel" not in v.path and "seed_generator" not in v.path]
    extra, missing = counted(stored) - counted(ours), counted(ours) - counted(stored)
    if extra or missing:
        def said(shapes: collections.Counter) -> str:
            more = len(shapes) - 3
            return ", ".join(f"{n} of {list(shape)}" for shape, n in shapes.most_common(3)) + (
                f" and {more} more shape{'s' * (more > 1)}" if more > 0 else "")

        raise ValueError(f"{path} holds the weights of a model of other shapes ({len(stored)} arrays; this model has "
                         f"{len(ours)}): " + "; ".join(part for part in (
                             extra and f"the file has {said(extra)} that this model does not",
                             missing and f"this model has {said(missing)} that the file does not") if part) +
                         ". Build the model from the config the file was saved with (quantized as it was), then load "
                         "it")


def restart_zeroed_adapters(model: keras.Model, source: str) -> None:
    """Keras loads a kernel into a layer with LoRA adapters (a file holds any merged into it) by zeroing both adapter
    matrices, and with both zero neither has a gradient: training went on changing nothing. The first starts afresh
    as `enable_lora` draws it (the second stays zero: the model computes the loaded kernel); where optimizer state
    came with the file (BackupAndRestore, ModelCheckpoint), it was the earlier adapters': said."""
    restarted = [layer for layer in model._flatten_layers() if getattr(layer, "lora_enabled", False)
                 and not keras.ops.any(layer.lora_kernel_a) and not keras.ops.any(layer.lora_kernel_b)]
    for layer in restarted:
        a = layer.lora_kernel_a
        a.assign(keras.initializers.HeUniform()(a.shape, a.dtype))  # (Dense.enable_lora's a_initializer)
    optimizer = getattr(model, "optimizer", None)
    if restarted and optimizer is not None and optimizer.built and int(optimizer.iterations) > 0:
        warnings.warn(f"loading {source}, Keras set this model's {len(restarted)} LoRA adapters to zero (a file holds "
                      "kernels with any adapters merged into them): they start afresh on the loaded kernels, and the "
                      "optimizer's state for them (this run's, or the file's) was the earlier adapters' and does not "
                      "fit the new ones, so training goes on otherwise than it would have; a LoRA run resumes exactly "
                      "from `tf-gpt2 train`'s checkpoint, which keeps its adapters", stacklevel=3)


def weight_table(model: keras.Model) -> dict[str, keras.Variable]:
    """Every weight of `model` under its GPT-2 checkpoint name, e.g. 'h.0.attn.c_attn.weight'."""
    table = {"wte.weight": model.wte.embeddings, "wpe.weight": model.wpe.embeddings}

    def add(name: str, layer: keras.layers.Layer) -> None:
        is_norm = isinstance(layer, keras.layers.LayerNormalization)
        table[name + ".weight"] = layer.gamma if is_norm else layer.kernel
        table[name + ".bias"] = layer.beta if is_norm else layer.bias

    for i, block in enumerate(model.h):
        for path in BLOCK_LAYERS:
            layer = block
            for part in path.split("."):
                layer = getattr(layer, part)
            add(f"h.{i}.{path}", layer)
        for scale in RESIDUAL_SCALES:  # a VariantBlock's learned residual scales (tf_gpt2.variants)
            if getattr(block, scale, None) is not None:
                table[f"h.{i}.{scale}"] = getattr(block, scale)
    add("ln_f", model.ln_f)
    return table


def non_finite_weight(model: keras.Model) -> str | None:
    """The name of a weight of `model` that holds NaN or an infinity (its GPT-2 name where it has one), or None."""
    names = {variable.path: name for name, variable in weight_table(model).items()
             if isinstance(variable, keras.Variable)}  # (an int4 layer's kernel is unpacked from its variable)
    for variable in model.weights:
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(variable))):
            return names.get(variable.path, variable.path)
    return None


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """The shape of every weight of a GPT-2 of `config`, under its checkpoint name, without building it."""
    d = config.n_embd
    layers = {"ln_1": [(d,), (d,)], "attn.c_attn": [(d, 3 * d), (3 * d,)], "attn.c_proj": [(d, d), (d,)],
              "ln_2": [(d,), (d,)], "mlp.c_fc": [(d, 4 * d), (4 * d,)], "mlp.c_proj": [(4 * d, d), (d,)],
              "ln_f": [(d,), (d,)], "wte": [(config.vocab_size, d)], "wpe": [(config.n_positions, d)]}

    def shape(name: str) -> tuple[int, ...]:
        layer, kind = name.split(".", 2)[-1].rsplit(".", 1) if name.startswith("h.") else name.rsplit(".", 1)
        return layers[layer][kind == "bias"]
    shapes = {name: shape(name) for name in tensor_names(config.n_layer)}
    if config.learned_residual_scale:
        shapes.update({f"h.{i}.{scale}": () for i in range(config.n_layer) for scale in RESIDUAL_SCALES})
    return shapes


def check_tensors(config: GPT2Config, tensors: dict[str, np.ndarray], source: str) -> None:
    """Every name, shape and value of `tensors` against `config`, before a model of that size is built
    (a config.json claiming a million layers is refused here, not after allocating them)."""
    if tensors and "wte.weight" not in tensors and not any(name.startswith("h.") for name in tensors):
        raise ValueError(f"{source}: none of its {len(tensors)} tensors has a GPT-2 name (wte.weight, "
                         f"h.0.attn.c_attn.weight, ...); one is '{min(tensors)}' (saved under a prefix, such as "
                         "torch.compile's '_orig_mod.'? remove it from the names)")
    found = {name.split(".")[1] for name in tensors if name.startswith("h.")}  # the layers the tensors hold
    if len(found) != config.n_layer:
        raise ValueError(f"{source}: the config says n_layer={config.n_layer}, the tensors hold {len(found)} layers")
    shapes = expected_shapes(config)
    missing = [name for name in shapes if name not in tensors]
    if missing:
        raise ValueError(f"{source}: missing tensor '{missing[0]}' ({len(missing)} missing in all)")
    unexpected = sorted(set(tensors) - set(shapes))
    if unexpected:
        raise ValueError(f"{source}: unexpected tensor '{unexpected[0]}' ({len(unexpected)} unexpected in all)")
    for name, expected in shapes.items():
        value = np.asarray(tensors[name])
        if tuple(value.shape) != expected:
            raise ValueError(f"{source}: tensor '{name}' has shape {tuple(value.shape)}, the model expects {expected}")
        if value.dtype.kind != "f":
            raise ValueError(f"{source}: tensor '{name}' has dtype {value.dtype}, expected floating point weights")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{source}: tensor '{name}' contains NaN or infinite values")
        if value.dtype.itemsize > 4 and not np.all(np.isfinite(value.astype(np.float32))):  # checked as it is kept
            raise ValueError(f"{source}: tensor '{name}' ({value.dtype}) holds values beyond float32's range "
                             f"(largest magnitude {np.max(np.abs(value)):.3g})")


def assign_weights(model: keras.Model, tensors: dict[str, np.ndarray], source: str) -> keras.Model:
    """Copy `tensors` (GPT-2 names) into `model`, checking every name, shape and value first."""
    check_tensors(model.config, tensors, source)
    return _assign(model, tensors)


def _assign(model: keras.Model, tensors: dict[str, np.ndarray]) -> keras.Model:
    vocab = model.config.vocab_size
    for name, variable in weight_table(model).items():
        value = np.asarray(tensors[name], dtype=variable.dtype)
        if name == "wte.weight" and vocab < variable.shape[0]:  # the padding rows keep their initial values
            value = np.concatenate([value, keras.ops.convert_to_numpy(variable)[vocab:]])
        variable.assign(value)
    return model


def checkpoint_tensors(model: keras.Model) -> dict[str, np.ndarray]:
    """Every weight as float32 numpy under its GPT-2 name, the token embedding without padding rows."""
    if getattr(model, "quantization", None):  # (its int8 codes were read as the weights)
        raise ValueError(f"the model is quantized ({model.quantization}): its weights are no longer float; take them "
                         "from the float model, before quantize()")
    with adapters_merged_as_stored(model):
        tensors = {name: np.asarray(host_array(v), dtype=np.float32) for name, v in weight_table(model).items()}
    tensors["wte.weight"] = tensors["wte.weight"][: model.config.vocab_size]
    return tensors


def _gpt2_only(model: keras.Model, fmt: str) -> None:
    cfg = model.config
    if cfg.block_variant():
        raise ValueError(f"the {fmt} format holds only GPT-2's pre-LN blocks without residual scales")


def _config(source: str, **values: Any) -> GPT2Config:
    """The GPT2Config a checkpoint's `source` (its config file) describes; a value that breaks a rule is named
    with that file."""
    try:
        return GPT2Config(**values)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from None


# -- Hugging Face -------------------------------------------------------------------------------
def config_from_hf(hf: dict[str, Any], source: str = "config.json", **overrides: Any) -> GPT2Config:
    if hf.get("model_type") not in (None, "gpt2"):  # (a config without one is read as GPT-2's, as older saves were)
        raise ValueError(f"{source} is the config of a {hf['model_type']!r} model, not GPT-2")
    sizes = {key: _hf_size(hf, key, source) for key in ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions")}
    missing = [key for key, value in sizes.items() if value is None]
    if missing:
        raise ValueError(f"{source} lacks {', '.join(missing)}: not a GPT-2 config")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in HF_ACTIVATIONS:
        raise ValueError(f"{source}: unsupported activation_function {activation!r}")
    n_embd = sizes["n_embd"]
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise ValueError(f"{source}: n_inner={hf['n_inner']} is not 4*n_embd; only GPT-2's 4x MLP is supported")
    _hf_flag(hf, "tie_word_embeddings", True, source)  # (read by read_hf: checked before a Hub download)
    if _hf_flag(hf, "scale_attn_by_inverse_layer_idx", False, source) or not _hf_flag(hf, "scale_attn_weights", True,
                                                                                          source):
        raise ValueError(f"{source} changes GPT-2's attention scaling; this is not supported")
    # Each rate missing is transformers' default, 0.1; resid_pdrop is `dropout`, the other two kept where they differ
    rates = {name: hf.get(name, 0.1) for name in DROPOUTS}
    if bad := [name for name, rate in rates.items() if not is_rate(rate)]:  # (named by its key, not as `dropout`)
        raise ValueError(f"{source}: {bad[0]} must be a number in [0, 1), got "
                         f"{'null' if rates[bad[0]] is None else repr(rates[bad[0]])}")
    resid_pdrop = rates["resid_pdrop"]
    dropouts = {name: rate for name, rate in rates.items() if rate != resid_pdrop}
    values = dict(
        **sizes, layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        activation=HF_ACTIVATIONS[activation], initializer_range=hf.get("initializer_range", 0.02),
        dropout=resid_pdrop, **dropouts, characters=hf.get("characters"),  # characters: tf_gpt2's own key
    )
    return _config(source, **with_overrides(values, overrides))


# transformers' other names for GPT-2's sizes (GPT2Config.attribute_map), which it takes over GPT-2's own
HF_SIZE_NAMES = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
                 "n_positions": "max_position_embeddings"}


def _hf_size(hf: dict[str, Any], key: str, source: str) -> Any:
    """A size of GPT-2's under its own name or transformers' other one (n_positions: also the older n_ctx);
    None where neither is given. Two names that disagree are refused: which one is the model's is not clear."""
    given = {name: hf[name] for name in (key, HF_SIZE_NAMES.get(key)) if hf.get(name) is not None}
    if len(given) == 2 and len(set(given.values())) == 2:
        (a, x), (b, y) = given.items()
        raise ValueError(f"{source} gives {a}={x!r} and {b}={y!r}, two names of one setting (transformers reads "
                         f"{b}): make them equal, or remove one")
    if given:
        return next(iter(given.values()))
    return hf.get("n_ctx") if key == "n_positions" else None


def _hf_flag(hf: dict[str, Any], key: str, default: bool, source: str) -> bool:
    """A true/false setting of config.json (transformers refuses another value: `0` or null read as false by some
    of its versions and as true by a test of `is False`)."""
    value = hf.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{source}: {key} must be true or false, got {json.dumps(value)}")
    return value


def _read_safetensors(path: str, with_tensors: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors of a safetensors file (none without `with_tensors`) and its metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            tensors, metadata = {k: f.get_tensor(k) for k in f.keys() if with_tensors}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise _unreadable(path, e) from e
    return {k: widened(v) for k, v in tensors.items()}, metadata


LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _lfs_pointer(*paths: str) -> ValueError | None:
    """The error for a Git LFS pointer (what a clone made without Git LFS holds) in place of weights at one of
    `paths`, or None."""
    for path in paths:
        with contextlib.suppress(OSError), open(path, "rb") as f:
            if f.read(len(LFS_POINTER)) == LFS_POINTER:
                return ValueError(f"{path} is a Git LFS pointer, not the weights: the repository was cloned without "
                                  "Git LFS (`git lfs pull` in it fetches them)")
    return None


def _unreadable(path: str, error: Exception) -> ValueError:
    """Why the weights at `path` cannot be read: a Git LFS pointer is said as such."""
    if pointer := _lfs_pointer(path):
        return pointer
    # torch's refusal under weights_only, without its advice to unpickle whatever the file holds
    if said := re.search(r"WeightsUnpickler error:\s*(.*?)(?: Please use|$)", str(error), re.MULTILINE):
        error = ("it holds more than tensors, and reading it would run code it names" if "Unsupported global" in
                 said.group(1) else "not a state dict torch reads") + f" ({said.group(1).strip()})"
    return ValueError(f"cannot read {path}: {error}")


def widened(value: np.ndarray) -> np.ndarray:
    """float16 and bfloat16 weights in float32, as transformers loads them into a float32 model; other dtypes as
    they are, for `check_tensors` to refuse."""
    return value.astype(np.float32) if value.dtype.name in ("float16", "bfloat16") else value


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch (pip install 'tf_gpt2[torch]'), "
                          "or convert it to safetensors") from e
    try:  # weights_only: never unpickle arbitrary objects from a checkpoint
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _unreadable(path, e) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    # bfloat16/float16 widen to float32; other dtypes stay as they are, for assign_weights to refuse
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}


def _hf_weight_files(directory: str) -> list[str]:
    """The weight files of a Hugging Face dir, in transformers' order of preference: one safetensors file, its
    shards, one pickled file, its shards (`pytorch_model-00001-of-00002.bin` ..., named by their index)."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        paths = [os.path.join(directory, name) for name in (single, index)]
        # transformers' sharded save leaves an earlier single file (and reads it); its single-file save leaves an
        # earlier index, whose shards it removes (a stale index: the single file is read, as transformers reads it)
        if os.path.exists(paths[0]) and _shards_there(directory, index):
            newer = os.path.basename(max(paths, key=os.path.getmtime))
            raise ValueError(f"{directory} holds both {single} and the shards {index} names: two saves' weights (the "
                             f"newer: {newer}); remove the other")
        for path in paths:
            if os.path.exists(path):
                return [path] if path == paths[0] else index_shards(directory, index)
            refuse_dangling_link(path)  # not passed over for the next kind (other weights)
    raise FileNotFoundError(f"{directory} has config.json but no model.safetensors or pytorch_model.bin (nor their "
                            "shards' index)")


def _shards_there(directory: str, index_name: str) -> bool:
    """Whether `index_name` and every shard it names are in `directory`."""
    try:
        return os.path.exists(os.path.join(directory, index_name)) and all(map(os.path.exists,
                                                                               index_shards(directory, index_name)))
    except (ValueError, OSError):  # (an index that cannot be read names no shards)
        return False


SHAPE = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")  # what a checkpoint's tensors fix
COMPUTED = ("activation", "layer_norm_epsilon", "norm_position", "learned_residual_scale")  # and what they compute
SAVE_ID = "tf_gpt2_save_id"  # in config.json and the safetensors metadata: which save wrote them, together
SAVED_CONFIG = "tf_gpt2_config"  # in the safetensors metadata: the shape and arithmetic the weights were saved for


def _saved_for(config: GPT2Config, metadata: dict[str, str], path: str) -> str:
    """Where `config` differs from the shape and arithmetic a tf_gpt2 save wrote into its weights' metadata (at
    `path`), in words; "" where it does not."""
    if SAVED_CONFIG not in metadata:  # (an earlier tf_gpt2's save recorded its id alone)
        return (f"a config.json of their own, whose {SAVE_ID} is {metadata[SAVE_ID]!r}: if this one is meant for "
                "them, add that id to it")
    try:
        saved = json.loads(metadata[SAVED_CONFIG])
    except ValueError:
        saved = None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: its metadata's {SAVED_CONFIG} is not a JSON object: {metadata[SAVED_CONFIG]!r:.80}")
    return ", ".join(f"{name}={saved.get(name, '?')!r} (config.json: {getattr(config, name)!r})"
                     for name in (*SHAPE, *COMPUTED) if saved.get(name, "?") != getattr(config, name))


def refuse_adapter(names: Collection[str], source: str) -> None:
    """Refuse a checkpoint (`source`, whose files are `names`) with a PEFT adapter: transformers loads the adapter
    onto the base model it names; read alone, its weights are another model's."""
    if PEFT_ADAPTER_FILES[0] in names:
        raise ValueError(f"{source} holds a PEFT adapter ({PEFT_ADAPTER_FILES[0]}), which transformers with peft "
                         "applies to the model and tf_gpt2 does not: merge it into the weights first (peft: "
                         "merge_and_unload(), then save_pretrained into a new folder) and load that, or move the "
                         "adapter away")


def _warn_of_another_end(path: str, hf_config: dict[str, Any], config: GPT2Config) -> None:
    """Say where a checkpoint's end token (config.json's `eos_token_id`, at `path`) is not where `generate` stops
    unless told: after `<|endoftext|>` where the ids are GPT-2's, else nowhere."""
    declared = hf_config.get("eos_token_id")
    declared = declared if isinstance(declared, list) else [declared]
    # (ids past the vocabulary end nothing: transformers' default 50256 in a tiny model of 1,000 ids)
    ends = sorted({t for t in declared if is_integer(t) and 0 <= t < config.vocab_size})
    end = end_of_text_id(config)
    if ends and ends != [end]:
        stops = "nowhere" if end is None else f"after token {end} (<|endoftext|>)"
        warnings.warn(f"{path} ends a text with token {' or '.join(map(str, ends))}, and generate stops {stops} "
                      f"unless given stop_ids={ends}; tf-gpt2 generate stops {stops}, and save_pretrained writes "
                      f"eos_token_id {'null' if end is None else end}")


def read_hf(directory: str, **overrides: Any) -> tuple[GPT2Config, Tensors]:
    refuse_adapter(os.listdir(directory), directory)
    config_path = os.path.join(directory, "config.json")
    hf_config = read_json(config_path)
    config = config_from_hf(hf_config, config_path, **overrides)
    tied = _hf_flag(hf_config, "tie_word_embeddings", True, config_path)
    _warn_of_another_end(config_path, hf_config, config)
    tensors: dict[str, np.ndarray] = {}
    for path in _hf_weight_files(directory):
        if path.endswith(".safetensors"):
            found, metadata = _read_safetensors(path)
            # save_hf writes the weights first: a save cut short leaves its weights beside the config.json before,
            # another save's (another id) or one without an id (transformers', a hand-written one), which is read
            # where it gives the weights' shape and arithmetic. A config.json with an id beside weights without one
            # is transformers' save of a model it loaded from ours (it keeps the key): read as it is.
            if SAVE_ID in metadata and metadata[SAVE_ID] != hf_config.get(SAVE_ID):
                differs = "" if SAVE_ID in hf_config else _saved_for(config, metadata, path)
                if SAVE_ID in hf_config or differs:
                    said = f" (the weights were saved for {differs})" if differs else ""
                    raise ValueError(f"{path} was saved with another config.json than the one beside it{said} (an "
                                     "interrupted save?): the pair does not belong together; save the model again")
        else:
            found = _read_torch_bin(path)
        for key, value in found.items():
            name = key.removeprefix("transformer.")
            if name in tensors:
                raise ValueError(f"{path}: tensor '{name}' appears twice (as '{key}' and once before)")
            tensors[name] = value
    tensors = {k: v for k, v in tensors.items() if not k.endswith(HF_IGNORED_SUFFIXES)}
    lm_head = tensors.pop("lm_head.weight", None)  # tied to wte in GPT-2
    if lm_head is None and not tied:  # (transformers: a head left random)
        raise ValueError(f"{config_path} sets tie_word_embeddings false (an LM head of its own), but {directory}'s "
                         "weights have no lm_head.weight")
    if lm_head is not None and "wte.weight" not in tensors:  # the tie saved once, under the head's name
        tensors["wte.weight"] = lm_head                      # (safetensors.torch.save_model does that)
    elif lm_head is not None and not np.array_equal(lm_head, tensors["wte.weight"]):
        raise ValueError(f"{directory}: lm_head.weight differs from wte.weight; GPT-2's LM head is tied")
    return config, tensors


def hf_tokenizer_files(cfg: GPT2Config) -> dict[str, Any]:
    """Writers of GPT-2's tokenizer files in Hugging Face's layout (vocab.json and merges.txt are the
    official encoder.json and vocab.bpe), keyed by file name."""
    encoder_json, vocab_bpe = default_vocab_files()
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    tokenizer_config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": cfg.n_positions,
                        "add_prefix_space": False, **special}

    def copy(source: str):
        return lambda path: shutil.copyfile(source, path)

    return {"vocab.json": copy(encoder_json), "merges.txt": copy(vocab_bpe),
            "tokenizer_config.json": json_writer(tokenizer_config), "special_tokens_map.json": json_writer(special)}


def save_hf(model: keras.Model, directory: str | os.PathLike) -> None:
    """Write config.json + model.safetensors that `transformers.GPT2LMHeadModel` loads, and, for the
    GPT-2 vocabulary (or one padded past it), the tokenizer files that `transformers.AutoTokenizer` loads.

    Both are written in full before either replaces an older file, and both carry the id of this save (the weights
    also the shape and arithmetic they are for), so a pair that a crash mixed up is refused on load where the
    config.json is another save's or gives other settings. Then every file there that a reader would take for the
    model instead of, or beside, what was saved (another checkpoint's weights, OpenAI's or keras-hub's checkpoint,
    tokenizer files of another vocabulary: `files_read_instead`) is removed, with a warning that lists them, as
    transformers removes the weight files of an older save. A folder that holds such files but no GPT-2 checkpoint
    (another model's, a project's) is refused instead, and left as it was.
    """
    from safetensors.numpy import save_file

    _gpt2_only(model, "Hugging Face")
    directory = os.fspath(directory)
    if name := non_finite_weight(model):  # a checkpoint that no reader loads, in place of the one there
        raise ValueError(f"weight '{name}' contains NaN or infinite values: saving it to {directory} would write a "
                         "checkpoint that does not load; nothing was written")
    _refuse_replacing_another_config(os.path.join(directory, "config.json"))
    make_folders(directory)
    cfg = model.config
    activation = {"gelu_tanh": "gelu_new"}.get(cfg.activation, cfg.activation)
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.n_positions, "n_ctx": cfg.n_positions,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": activation, "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_range": cfg.initializer_range,
        **{name: cfg.dropout_rate(name) for name in DROPOUTS}, "tie_word_embeddings": True,
        SAVE_ID: secrets.token_hex(8),
    }
    end_of_text = end_of_text_id(cfg)
    hf_config.update(bos_token_id=end_of_text, eos_token_id=end_of_text)
    if cfg.characters is not None:  # what its ids mean, under tf_gpt2's own key (transformers keeps unknown keys)
        hf_config["characters"] = cfg.characters
    metadata = {"format": "pt", SAVE_ID: hf_config[SAVE_ID],
                SAVED_CONFIG: json.dumps({name: getattr(cfg, name) for name in (*SHAPE, *COMPUTED)})}
    tensors = {"transformer." + name: np.ascontiguousarray(v) for name, v in checkpoint_tensors(model).items()}

    writes = {  # weights first: a crash between these two renames leaves a pair that read_hf refuses
        os.path.join(directory, "model.safetensors"): lambda p: save_file(tensors, p, metadata=metadata),
        os.path.join(directory, "config.json"): json_writer(hf_config),
    }
    if cfg.characters is None and cfg.vocab_size >= VOCAB_SIZE:  # GPT-2's BPE (its 50,257 ids, or padded past
        # them as nanoGPT's 50,304): transformers.AutoTokenizer / pipeline read these
        writes.update({os.path.join(directory, name): write for name, write in hf_tokenizer_files(cfg).items()})
    saved = [os.path.basename(path) for path in writes]
    stale = files_read_instead(directory, saved)  # before config.json changes
    replaced = [name for name in saved if os.path.lexists(os.path.join(directory, name))]
    _refuse_replacing_what_is_no_checkpoint(directory, replaced + stale)
    warn_of_a_folder_of_texts(directory, "a checkpoint")  # (once it is written: not before a refusal)
    write_together(writes)
    for name in stale:
        path = os.path.join(directory, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)  # (assets)
    if stale:
        warnings.warn(f"{directory} held files of another checkpoint that would be read instead of, or beside, the "
                      f"model just saved; removed {', '.join(stale)}", stacklevel=3)


HF_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                      "added_tokens.json", "tokenizer.json", *OTHER_KINDS)
# Weights transformers (or its TF/Flax classes, or peft) would read, and the generation defaults it takes from a dir.
HF_OTHER_FILES = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "generation_config.json",
                  *PEFT_ADAPTER_FILES)
OPENAI_HPARAMS = ("n_vocab", "n_ctx", "n_embd", "n_layer", "n_head")  # what GPT-2's hparams.json gives
OPENAI_FILES = ("hparams.json", "checkpoint", "encoder.json", "vocab.bpe")  # and the model.ckpt.* files
KERAS_HUB_FILES = ("metadata.json", "model.weights.h5", "preprocessor.json", "task.json", "task.weights.h5",
                   "tokenizer.json", "assets")


def _refuse_replacing_another_config(path: str) -> None:
    """A config.json that is no GPT-2 checkpoint's (a project's settings, another kind of model) is not replaced."""
    if not os.path.lexists(path):
        return
    try:
        config = read_json(path)
    except (ValueError, OSError):  # not JSON, not an object, a broken link
        config = None
    if not isinstance(config, dict) or not {"model_type", "architectures", "registered_name", "n_embd"} & set(config):
        raise ValueError(f"{path} is not a checkpoint's config.json (it names no model_type): saving the model there "
                         "would replace it. Save into a new folder, or move that file away")
    if "registered_name" in config and config["registered_name"] not in KERAS_HUB_GPT2:  # Keras' own, keras-hub's
        named = config["registered_name"] or config.get("class_name")
        raise ValueError(f"{path} is the config of a Keras model ({named}), not of a GPT-2 checkpoint: saving GPT-2 "
                         "there would replace it. Save into a new folder")
    if config.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{path} is the config of a {config['model_type']!r} model: saving GPT-2 there would replace "
                         "it. Save into a new folder")


def _refuse_replacing_what_is_no_checkpoint(directory: str, replaced: list[str]) -> None:
    """A save replaces or removes files (`replaced`) only of a GPT-2 checkpoint: a config.json that passed
    `_refuse_replacing_another_config`, OpenAI's GPT-2 hparams.json, the model.safetensors of an earlier save (its
    save id), or GPT-2's own tokenizer (saved there first). Elsewhere it writes new files only, and it removes no
    folder but a keras-hub preset's assets."""
    for name in replaced:
        path = os.path.join(directory, name)
        if name != "assets" and os.path.isdir(path) and not os.path.islink(path):
            raise ValueError(f"{path} is a folder, where a checkpoint has a file of that name: saving the model there "
                             "would remove it. Save into a new folder, or move it away")
    if not replaced or os.path.lexists(os.path.join(directory, "config.json")):
        return
    with contextlib.suppress(ValueError, OSError):
        hparams = read_json(os.path.join(directory, "hparams.json"))
        if all(key in hparams for key in OPENAI_HPARAMS):
            return
    with contextlib.suppress(ValueError, OSError):
        if SAVE_ID in _read_safetensors(os.path.join(directory, "model.safetensors"), with_tensors=False)[1]:
            return
    if set(replaced) <= set(HF_TOKENIZER_FILES) and other_tokenizer(directory) is None:  # GPT-2's, as written
        return
    raise ValueError(f"{directory} holds no GPT-2 checkpoint, but files a reader would take for the model's, which "
                     f"saving it there would replace or remove: {', '.join(replaced)}. Save into a new folder, or move "
                     "them away")


def files_read_instead(directory: str, saved: list[str]) -> list[str]:
    """The files of `directory`, other than the `saved` ones, that a reader (`GPT2.from_pretrained`, transformers,
    keras-hub) would take for the model: other weight files (pickled, sharded, TF/Flax), OpenAI's checkpoint
    (hparams.json, model.ckpt.*), a keras-hub preset, tokenizer files that were not saved, generation defaults."""
    names = [*HF_OTHER_FILES, *HF_TOKENIZER_FILES]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = os.path.join(directory, index)
        if os.path.exists(path):
            try:
                weight_map = read_json(path).get("weight_map") or {}
            except ValueError:
                weight_map = {}
            names += [index] + sorted({str(f) for f in weight_map.values()} if isinstance(weight_map, dict) else [])
    if os.path.exists(os.path.join(directory, "hparams.json")):
        names += [*OPENAI_FILES, *(os.path.basename(f) for f in glob.glob(os.path.join(directory, "*.ckpt.*")))]
    with contextlib.suppress(ValueError, OSError):  # a keras-hub GPT-2 preset: its metadata and its backbone's config
        metadata = read_json(os.path.join(directory, "metadata.json"))
        if {"keras_hub_version", "keras_nlp_version"} & set(metadata) and read_json(
                os.path.join(directory, "config.json")).get("registered_name") in KERAS_HUB_GPT2:
            names += KERAS_HUB_FILES
    return sorted({name for name in names  # files of this directory only
                   if os.path.basename(name) == name and name not in saved
                   and os.path.lexists(os.path.join(directory, name))})


# -- OpenAI's original TensorFlow checkpoints (openai/gpt-2) -------------------------------------
def openai_name(name: str) -> str:
    """'h.0.attn.c_attn.weight' -> 'model/h0/attn/c_attn/w'; LayerNorm weights are 'g'."""
    if name in ("wte.weight", "wpe.weight"):
        return "model/" + name.split(".")[0]
    parts = name.split(".")
    if parts[0] == "h":
        parts = [f"h{parts[1]}"] + parts[2:]
    is_norm = parts[-2].startswith("ln_")
    parts[-1] = {"weight": "g" if is_norm else "w", "bias": "b"}[parts[-1]]
    return "model/" + "/".join(parts)


def read_openai(directory: str, **overrides: Any) -> tuple[GPT2Config, Tensors]:
    import tensorflow as tf

    hparams = os.path.join(directory, "hparams.json")
    hp = read_json(hparams)
    missing = [key for key in OPENAI_HPARAMS if key not in hp]
    if missing:
        raise ValueError(f"{hparams} lacks {', '.join(missing)}: not a GPT-2 hparams file")
    config = _config(hparams, vocab_size=hp["n_vocab"], n_positions=hp["n_ctx"], n_embd=hp["n_embd"],
                     n_layer=hp["n_layer"], n_head=hp["n_head"], **overrides)
    prefix, named = None, os.path.join(directory, "checkpoint")
    if os.path.exists(named):  # TensorFlow's index of the folder's checkpoints: the one it names
        try:
            state = tf.train.get_checkpoint_state(directory)
        except (tf.errors.OpError, ValueError) as e:  # (text_format's ParseError is a ValueError)
            raise ValueError(f"{named} is not TensorFlow's checkpoint index ({e}): fix or remove it") from None
        if state is not None and state.model_checkpoint_path:
            # TF1's Saver writes absolute paths: a run copied or moved names where it was. This folder's files of
            # that name are read, never another folder's, nor another checkpoint of this one.
            prefix = os.path.join(directory, os.path.basename(state.model_checkpoint_path))
            if not os.path.exists(prefix + ".index"):
                raise FileNotFoundError(f"{named} names {state.model_checkpoint_path}, whose files (.index, .data-*) "
                                        f"are not in {directory}: copy them there, or name this folder's checkpoint "
                                        "in it")
    if prefix is None:
        found = sorted(glob.glob(os.path.join(glob.escape(directory), "*.ckpt*.index")))
        if not found:
            raise FileNotFoundError(f"{directory} has hparams.json but no model.ckpt.* checkpoint")
        if len(found) > 1:  # TensorFlow's `checkpoint` file would name the latest: without it, none is the one
            names = ", ".join(os.path.basename(f) for f in found)
            raise ValueError(f"{directory} holds {len(found)} checkpoints ({names}) and no `checkpoint` file naming "
                             "one of them: keep one, or write that file")
        prefix = found[0].removesuffix(".index")
    files = sorted(glob.glob(glob.escape(prefix) + ".*"))  # (its index and data: Git LFS pointers in a bare clone)
    try:
        reader = tf.train.load_checkpoint(prefix)
        stored = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as e:
        raise _lfs_pointer(*files) or ValueError(
            f"cannot read OpenAI checkpoint {prefix}: {e}") from e
    expected = {openai_name(name): name for name in tensor_names(config.n_layer)}
    layers = {int(m[1]) for key in stored if (m := re.match(r"model/h(\d+)/", key))}  # (optimizer slots aside)
    if more := sorted(layer for layer in layers if layer >= config.n_layer):
        shown = ", ".join(f"h{i}" for i in more[:3]) + ", ..." * (len(more) > 3)
        raise ValueError(f"{prefix} holds layer(s) {shown} past the {config.n_layer} of {hparams}: fix its n_layer "
                         "rather than load a model cut short")
    tensors = {}
    for key, name in expected.items():
        if key not in stored:
            raise ValueError(f"{prefix}: missing tensor '{key}'")
        try:
            value = reader.get_tensor(key)
        except (tf.errors.OpError, ValueError, IndexError) as e:  # IndexError: "Read less bytes than requested"
            raise _lfs_pointer(*files) or ValueError(
                f"cannot read '{key}' from OpenAI checkpoint {prefix} ({e}): its data file is damaged or cut short (an "
                "interrupted download?)") from e
        if value.ndim == 3 and value.shape[0] != 1:
            raise ValueError(f"{prefix}: tensor '{key}' has shape {value.shape}, expected [1, in, out] (a conv1d "
                             "kernel) or [in, out]")
        tensors[name] = widened(value[0] if value.ndim == 3 else value)  # conv1d weights are [1, in, out]
    return config, tensors


# -- keras-hub GPT2Backbone ---------------------------------------------------------------------
def read_keras_hub(backbone: Any, **overrides: Any) -> tuple[GPT2Config, Tensors]:
    """The config and tensors of a keras-hub `GPT2Backbone` (object or saved preset dir)."""
    source = f"keras-hub {type(backbone).__name__}"
    if isinstance(backbone, (str, os.PathLike)):
        import keras_hub

        folder = os.fspath(backbone)
        source = os.path.join(folder, "config.json")
        weights = [os.path.join(folder, name) for name in ("model.weights.h5", "model.weights.json")]  # (or shards')
        if not any(os.path.exists(path) for path in weights):
            raise FileNotFoundError(f"{folder} is a keras-hub preset without its weights: no {' or '.join(weights)}")
        try:
            backbone = keras_hub.models.GPT2Backbone.from_preset(folder)
        except (OSError, KeyError, ValueError, TypeError) as e:  # a damaged file, in h5py's or Keras' words
            raise _lfs_pointer(*weights) or ValueError(
                f"cannot load keras-hub preset {folder}: {type(e).__name__}: {e}") from e
    kh = backbone.get_config()
    if kh["intermediate_dim"] != 4 * kh["hidden_dim"]:
        raise ValueError(f"{source}: intermediate_dim {kh['intermediate_dim']} is not 4*hidden_dim")
    config = _config(source, vocab_size=kh["vocabulary_size"], n_positions=kh["max_sequence_length"],
                     n_embd=kh["hidden_dim"], n_layer=kh["num_layers"], n_head=kh["num_heads"],
                     **{"dropout": kh.get("dropout", 0.0), **overrides})  # its one rate: embedding, residual, attention
    layers = list(backbone._flatten_layers())
    if modes := sorted({mode for layer in layers if (mode := getattr(layer, "quantization_mode", None))}):
        raise ValueError(f"{source} is quantized ({', '.join(modes)}): a checkpoint's weights are float; load the "
                         "backbone as it was before quantize()")
    # Paths as the backbone names them, without a scope it was built in (keras.name_scope, a model's __init__)
    embedding = "token_embedding/embeddings"
    scope = next((v.path[: -len(embedding)] for v in backbone.weights if v.path.endswith(embedding)), "")
    w = {v.path.removeprefix(scope): widened(keras.ops.convert_to_numpy(v)) for v in backbone.weights}
    with adapters_merged_as_stored(backbone):  # LoRA adapters merged into the weights they adapt, as Keras saves them
        for layer in layers:
            for name in ("kernel", "embeddings") if getattr(layer, "lora_enabled", False) else ():
                if (stored := getattr(layer, f"_{name}", None)) is not None:
                    w[stored.path.removeprefix(scope)] = widened(keras.ops.convert_to_numpy(getattr(layer, name)))
    d = config.n_embd
    flat = lambda a: a.reshape(d, -1) if a.ndim == 3 else a.reshape(-1)  # noqa: E731  [D,H,Dh]->[D,D]
    tensors = {
        "wte.weight": w["token_embedding/embeddings"], "wpe.weight": w["position_embedding/embeddings"],
        "ln_f.weight": w["layer_norm/gamma"], "ln_f.bias": w["layer_norm/beta"],
    }
    for i in range(config.n_layer):
        p, h = f"transformer_layer_{i}/", f"h.{i}."
        attn = p + "self_attention/"
        for kind in ("kernel", "bias"):
            suffix = "weight" if kind == "kernel" else "bias"
            tensors[h + "attn.c_attn." + suffix] = np.concatenate(
                [flat(w[f"{attn}{qkv}/{kind}"]) for qkv in ("query", "key", "value")], axis=-1
            )
            out = w[f"{attn}attention_output/{kind}"]
            tensors[h + "attn.c_proj." + suffix] = out.reshape(-1, d) if kind == "kernel" else out
            tensors[h + "mlp.c_fc." + suffix] = w[f"{p}feedforward_intermediate_dense/{kind}"]
            tensors[h + "mlp.c_proj." + suffix] = w[f"{p}feedforward_output_dense/{kind}"]
        for ours, theirs in (("ln_1", "self_attention_layer_norm"), ("ln_2", "feedforward_layer_norm")):
            tensors[h + ours + ".weight"] = w[f"{p}{theirs}/gamma"]
            tensors[h + ours + ".bias"] = w[f"{p}{theirs}/beta"]
    return config, tensors


# -- dispatch -----------------------------------------------------------------------------------
def load_pretrained(model_class: type, source: Any, revision: str | None = None, **overrides: Any) -> keras.Model:
    """A `model_class` (GPT2) with the weights of any supported source; see the module docstring."""
    if fixed := [f"{k}={v!r:.40}" for k, v in overrides.items() if k in (*SHAPE, *COMPUTED, "characters")]:
        raise ValueError(f"{', '.join(fixed)}: a checkpoint's tensors fix its shape ({', '.join(SHAPE)}), what they "
                         f"compute ({', '.join(COMPUTED)}) and what its ids mean (characters); overrides set the rest "
                         "(dropout, vocab_multiple, remat, loss_chunk, ...)")
    try:  # the overrides alone: one that breaks a rule is the caller's, not the checkpoint's config file's
        GPT2Config(**overrides)
    except (ValueError, TypeError) as e:
        raise ValueError(f"from_pretrained's config overrides: {e}") from None
    if isinstance(source, str) and not os.path.lexists(source):  # a name: keras-hub's presets, then the Hub
        from tf_gpt2 import hub

        repo_id = hub.hub_repo_id(source)
        if hub.keras_hub_preset(source):
            if revision is not None:  # (it went to the Hub, as a repo of that name)
                same = hub.KERAS_HUB_TO_HF.get(source)
                raise ValueError(f"revision={revision!r} is for a Hugging Face repo; {source} is a keras-hub preset, "
                                 "which has none" + (f" (the Hugging Face repo {same!r} holds the same weights)"
                                                     if same else ""))
            source = hub.keras_hub_backbone(source)
        elif repo_id:
            source = hub.download(repo_id, revision, check_config=config_from_hf, check_files=refuse_adapter)
    elif revision is not None:
        raise ValueError(f"revision={revision!r} is for a Hugging Face repo name, not the local path {source}")
    if type(source).__name__ == "GPT2Backbone":
        config, tensors = read_keras_hub(source, **overrides)
        check_tensors(config, tensors, f"keras-hub {type(source).__name__}")  # before building a model that size
        return _assign(model_class(config), tensors)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"from_pretrained expects a path or a keras-hub GPT2Backbone, got {type(source).__name__}")
    path = os.fspath(source)
    refuse_dangling_link(path)  # (an unmounted disk: not a repo of that name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}, and it is not a Hugging Face repo name")
    if os.path.isfile(path):
        return _load_keras_file(model_class, path, overrides)
    for name in ("config.json", "hparams.json"):  # (taken for none: "is not a checkpoint")
        refuse_dangling_link(os.path.join(path, name))
    if os.path.exists(os.path.join(path, "hparams.json")) and os.path.exists(os.path.join(path, "config.json")):
        raise ValueError(f"{path} holds two checkpoints, OpenAI's (hparams.json, model.ckpt.*) and config.json: "
                         "it is not clear which is the model; remove one")
    if os.path.exists(os.path.join(path, "hparams.json")):
        read = read_openai
    elif os.path.exists(os.path.join(path, "config.json")):
        registered = read_json(os.path.join(path, "config.json")).get("registered_name")
        if registered is not None and re.fullmatch(r"keras_hub>\w+Backbone", registered) and \
                registered not in KERAS_HUB_GPT2:  # (a preset's config.json is its backbone's)
            raise ValueError(f"{path} is a keras-hub preset of a {registered.split('>', 1)[1]}, not of GPT-2's "
                             "GPT2Backbone")
        if registered is not None and registered not in KERAS_HUB_GPT2:  # (its config lacks GPT-2's fields)
            raise ValueError(f"{path} is a Keras model's folder ({registered}; model.save(..., zipped=False)), not a "
                             "checkpoint: load it with keras.models.load_model and save it as a .keras file")
        read = read_keras_hub if registered in KERAS_HUB_GPT2 else read_hf
    else:
        refuse_adapter(os.listdir(path), path)  # (a PEFT adapter's folder alone: said as one)
        inside = sorted(glob.glob(os.path.join(glob.escape(path), "*.keras")))  # a run folder of `tf-gpt2 train`
        from tf_gpt2 import hub

        named = isinstance(source, str) and "/" not in source and hub.hub_repo_id(f"hf://{source}")  # ("gpt2")
        raise FileNotFoundError(
            f"{path} is not a checkpoint: expected config.json (Hugging Face or keras-hub preset) "
            "or hparams.json (OpenAI)" + (f"; it holds {inside[0]}: pass that file" if inside else "")
            + (f" (the folder {path} is read before the Hub: for the Hugging Face repo, write hf://{source})"
               if named and not inside else ""))
    if (other := other_tokenizer(path, _declared_vocab_size(path))) is not None:  # before the weights are read
        raise ValueError(f"{other}: tf_gpt2 reads text with GPT-2's BPE (or a model's own characters) only, and a "
                         "checkpoint with a tokenizer of its own would be given other tokens than it was trained on")
    config, tensors = read(path, **overrides)
    check_tensors(config, tensors, path)  # before building a model that size
    return _assign(model_class(config), tensors)


def _declared_vocab_size(path: str) -> int | None:
    """The vocabulary size a checkpoint directory's config file gives (OpenAI's hparams.json, a Hugging Face or
    keras-hub config.json), or None; its reader names what is wrong with the file."""
    for name in ("hparams.json", "config.json"):
        if os.path.isfile(os.path.join(path, name)):
            try:
                found = read_json(os.path.join(path, name))
            except ValueError:
                return None
            inner = found.get("config") if isinstance(found.get("config"), dict) else {}  # keras-hub's
            size = found.get("n_vocab", found.get("vocab_size", inner.get("vocabulary_size")))
            return size if isinstance(size, int) and not isinstance(size, bool) else None
    return None


def _load_keras_file(model_class: type, path: str, overrides: dict) -> keras.Model:
    if not path.endswith(".keras"):
        raise ValueError(f"{path}: expected a .keras file or a checkpoint directory")
    if overrides:
        raise ValueError("config overrides do not apply to a .keras file")
    if not zipfile.is_zipfile(path):
        raise _lfs_pointer(path) or ValueError(f"{path} is not a readable .keras file: it is truncated, or not a zip "
                                               "archive")
    try:
        model = keras.models.load_model(path, compile=False)  # its weights; not its optimizer's state
    except Exception as e:  # a damaged archive fails in many ways (KeyError, BadZipFile, ...): name the file
        raise ValueError(f"cannot load {path}: {type(e).__name__}: {e}") from e
    if not isinstance(model, model_class):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a {model_class.__name__}")
    if name := non_finite_weight(model):  # as the other formats' tensors are checked (a NaN trained as a loss of NaN)
        raise ValueError(f"{path}: weight '{name}' contains NaN or infinite values")
    return model
