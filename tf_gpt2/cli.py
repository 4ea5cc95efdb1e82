"""The `tf-gpt2` command line: demo, prepare, train, generate, convert, export, eval."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.metadata
import math
import os
import random
import re
import shlex
import sys
import traceback
import warnings
from typing import Sequence

# The modules imported here load no TensorFlow: the `tf-gpt2` launcher parses the command line (and answers
# --help) with them alone, and each command imports what it runs.
from tf_gpt2.config import PRESETS
from tf_gpt2.data import VOCABS, refuse_a_dataset_or_run
from tf_gpt2.detokenize import DETOKENIZERS
from tf_gpt2.files import make_folders, refuse_replacing_another_kind, refuse_writing_over_inputs
from tf_gpt2.formats import FORMATS, MODEL_FILE_SUFFIXES, ON_DEVICE_SUFFIXES, QUANTIZATIONS
from tf_gpt2.train_config import BASE_DTYPES, DISTRIBUTIONS, PRECISIONS, STRATEGIES, TrainConfig


def _load_model(args: argparse.Namespace):
    from tf_gpt2 import GPT2, GPT2Config

    if args.model and args.random_init:
        raise ValueError(f"--model and --random-init name two models ({args.model}, an untrained "
                         f"{args.random_init}): give one")
    if args.model:
        return GPT2.from_pretrained(args.model, revision=args.revision)
    if args.random_init:
        if args.revision:
            raise ValueError("--revision is for a Hugging Face repo name given as --model, not --random-init")
        return GPT2(GPT2Config.from_preset(args.random_init))
    raise ValueError("no --model given: pass a checkpoint (HF dir, OpenAI TF dir, keras-hub preset dir or .keras "
                     "file), or --random-init PRESET for an untrained model")


def _written(path: str) -> str:
    """The line that reports writing the file `path`, said of what is there before it is written."""
    if os.path.islink(path):  # (replaced as `mv` replaces one: it was said as if the file it names were)
        target = os.readlink(path)
        kept = "which is left as it was" if os.path.exists(path) else "which is not there"
        return f"wrote {path} in place of the link there (to {target}, {kept})"
    return f"{'replaced the earlier' if os.path.isfile(path) else 'wrote'} {path}"


DEMO_CONTEXT = 64  # characters: nanoGPT's CPU recipe for Shakespeare (4 layers, 4 heads, 128 wide)


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small character-level GPT on the embedded Shakespeare, then let it write."""
    from tf_gpt2.data import TokenShards, codec, embedded_corpus, read_text
    from tf_gpt2.tokenizer import checked_utf8
    from tf_gpt2.training import CHECKPOINT, MODEL_FILE, checkpoint_step, train

    _check_max_new_tokens(args.max_new_tokens)
    if not args.prompt:
        raise ValueError("the prompt is empty: the model needs at least one character to continue")
    known = set(read_text(embedded_corpus()))
    unknown = list(dict.fromkeys(c for c in checked_utf8("the prompt", args.prompt) if c not in known))
    if unknown:  # before minutes of training, not after
        these = f"characters {', '.join(map(repr, unknown))} of the prompt are" if len(unknown) > 1 else \
            f"character {unknown[0]!r} of the prompt is"
        raise ValueError(f"{these} not in Shakespeare's text, so not in the demo model's vocabulary")
    # Steps per compiled call: they divide every round, whatever --steps is, and the rest of the round a resumed
    # run starts inside (a checkpoint at an earlier --steps)
    execution = math.gcd(10, args.steps, checkpoint_step(os.path.join(args.out, CHECKPOINT)) or 0)
    cfg = TrainConfig(
        out=args.out, vocab="char", preset="gpt2-tiny",
        model=dict(n_layer=4, n_head=4, n_embd=128, n_positions=DEMO_CONTEXT), steps=args.steps, batch_size=12,
        block_size=DEMO_CONTEXT, learning_rate=2e-3, warmup_steps=min(100, args.steps // 10),
        eval_interval=max(execution, args.steps // 4 // execution * execution), eval_batches=20,
        steps_per_execution=execution, weight_decay=0.1, sample_tokens=0,
        resume_with_changes=args.resume_with_changes,
    )
    model, history = train(cfg)  # (and writes OUT/model.keras)
    saved = os.path.join(cfg.out, MODEL_FILE)
    encode, decode = codec(TokenShards(f"{cfg.out}/data", "train").manifest)
    ids, chunk = encode(args.prompt), DEMO_CONTEXT // 4
    if len(ids) > DEMO_CONTEXT - chunk:
        print(f"note: the prompt has {len(ids)} characters; the model reads the last {DEMO_CONTEXT - chunk} of it, "
              f"then the text it writes, through its context of {DEMO_CONTEXT}", file=sys.stderr)
    while len(ids) < len(args.prompt) + args.max_new_tokens:  # a sliding window over the 64-character context
        ids += model.generate(ids[-(DEMO_CONTEXT - chunk):], max_new_tokens=chunk, temperature=0.8, top_k=20,
                              seed=len(ids))
    val = f", validation loss {history['val_loss'][-1]:.3f}" if history.get("val_loss") else ""
    print(f"\n{model.count_params():,} parameters, {args.steps} steps{val}. The model writes:\n")
    print(decode(ids[: len(args.prompt) + args.max_new_tokens]))
    print(f"\nThe model is {saved}; continue with:\n  {continue_command(args.prompt, saved)}")
    return 0


def _check_max_new_tokens(value: int) -> None:
    if value < 1:
        raise ValueError(f"--max-new-tokens must be a positive integer, got {value}")


def continue_command(prompt: str, model: str) -> str:
    """The `tf-gpt2 generate` command that continues `prompt` with the demo's model, as a shell reads it: the
    prompt without its trailing line breaks, after `--` where it starts with "-" (else read as a flag).

    >>> continue_command("To be\\n", "runs/my demo/model.keras")
    "tf-gpt2 generate 'To be' --model 'runs/my demo/model.keras' --max-new-tokens 48 --temperature 0.8 --top-k 20"
    >>> continue_command("-- a play", "m.keras")
    "tf-gpt2 generate --model m.keras --max-new-tokens 48 --temperature 0.8 --top-k 20 -- '-- a play'"
    """
    prompt = prompt.rstrip("\n") or prompt
    flags = ["--model", model, "--max-new-tokens", "48", "--temperature", "0.8", "--top-k", "20"]
    words = flags + ["--", prompt] if prompt.startswith("-") else [prompt, *flags]
    return shlex.join(["tf-gpt2", "generate", *words])


def cmd_prepare(args: argparse.Namespace) -> int:
    from tf_gpt2.data import MANIFEST, embedded_corpus, prepare, refuse_a_runs_own_dataset

    refuse_writing_over_inputs(args.out, *(args.inputs or []))
    refuse_a_runs_own_dataset(args.out)
    replaced = os.path.exists(os.path.join(args.out, MANIFEST))  # (said, as convert and export say theirs)
    manifest = prepare(args.inputs or embedded_corpus(), args.out, val_fraction=args.val_fraction, vocab=args.vocab)
    print(f"{'replaced the earlier dataset in' if replaced else 'wrote'} {args.out}")
    for split, shards in manifest["splits"].items():
        print(f"{split}: {sum(s['tokens'] for s in shards):,} tokens in {len(shards)} shard(s)")
    return 0


# `tf-gpt2 train` flags: one per TrainConfig field, with its default and type taken from TrainConfig.
TRAIN_FLAGS = {
    "data": "prepared dir, or text file/folder/glob (default: embedded Shakespeare)",
    "vocab": "tokenization of raw --data (default: gpt2; refused over prepared shards of the other)",
    "preset": f"size of a new model (default: {TrainConfig.preset}); not with --init-from, whose checkpoint has its "
              "own",
    "init_from": "fine-tune from a checkpoint: a Hugging Face or keras-hub name, an HF/OpenAI/preset dir, .keras",
    "steps": "optimizer steps in all",
    "batch_size": "sequences per micro-batch (global, across replicas)",
    "block_size": "tokens per sequence",
    "learning_rate": "peak learning rate after warmup",
    "min_learning_rate": "learning rate at the end of the cosine (default: --learning-rate / 10)",
    "warmup_steps": "linear warmup steps (default 100; at most --steps - 1: a longer one is shortened, with a note)",
    "weight_decay": "AdamW decay on weights of rank >= 2",
    "grad_clip": "global gradient-norm clip (0: off)",
    "grad_accum": "micro-batches of --batch-size accumulated per optimizer step (--steps counts steps)",
    "eval_interval": "steps between validation/checkpoint/sample",
    "eval_batches": "validation batches per evaluation",
    "seed": "seed of init, dropout and data order",
    "precision": "Keras dtype policy (mixed_float16 adds loss scaling)",
    "steps_per_execution": "micro-batches per compiled call",
    "lora_rank": "fine-tune only LoRA adapters of this rank (0: off)",
    "base_dtype": "with --lora-rank: hold the frozen base in 16 bits (half its memory; float16 adds loss scaling); "
                  "adapters stay float32",
    "strategy": "tf.distribute strategy, TensorFlow backend; without GPUs, mirrored and multiworker run without XLA "
                "(default: none)",
    "distribution": "keras.distribution on the JAX backend (KERAS_BACKEND=jax): data parallel, or the weights split",
    "mesh": "BATCHxMODEL devices for --distribution model (default: 1xALL)",
    "coordinator": "host:port of process 0 in a run of many processes (or KERAS_DISTRIBUTION_JOB_ADDRESSES)",
    "num_processes": "processes in the run (or KERAS_DISTRIBUTION_NUM_PROCESSES)",
    "process_id": "this process's index, 0 writes the files (or KERAS_DISTRIBUTION_PROCESS_ID)",
    "sample_prompt": "prompt of the samples printed after each round (default: a line break, or none in characters "
                     "without one; empty: from <|endoftext|>, in a character model from its first character, id 0, "
                     "not shown; refused where no samples are made: --sample-tokens 0, --strategy, many processes)",
    "sample_tokens": f"length of those samples (default {TrainConfig.sample_tokens}; 0: none; at most the context "
                     "less one prompt token; any but 0 and the "
                     "default refused where no samples are made: --strategy, many processes)",
    "resume_with_changes": "resume the run in --out even though its settings or data changed",
}
SHAPE_HELP = "override the preset's {} (--init-from's checkpoint fixes it)"
SETTING_HELP = "set the model's {} (over the preset's, or --init-from's checkpoint's)"
MODEL_OVERRIDES = {"n_layer": (int, SHAPE_HELP.format("layers")), "n_head": (int, SHAPE_HELP.format("attention heads")),
                   "n_embd": (int, SHAPE_HELP.format("width")),
                   "n_positions": (int, SHAPE_HELP.format("context length")),
                   "dropout": (float, SETTING_HELP.format("dropout (embeddings, residual branches and attention)")),
                   "attn_pdrop": (float, "set the model's attention-probability dropout (default: --dropout where "
                                         "given, else the preset's or checkpoint's); 0 keeps the fused attention "
                                         "kernel in training"),
                   "vocab_multiple": (int, SETTING_HELP.format("token-embedding rounding (64: 50257 -> 50304 rows)"))}


# Flags whose TrainConfig default stands for "not given" (None here), which --init-from, prepared --data and a short
# run need to tell from a value given.
UNSET_BY_DEFAULT = ("preset", "vocab", "warmup_steps")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    choices = {"vocab": VOCABS, "preset": sorted(PRESETS), "precision": PRECISIONS, "base_dtype": BASE_DTYPES,
               "strategy": STRATEGIES[1:], "distribution": DISTRIBUTIONS[1:]}
    # fields whose default is None
    types = {"min_learning_rate": float, "num_processes": int, "process_id": int, "base_dtype": str,
             "warmup_steps": int}
    for field in dataclasses.fields(TrainConfig):
        if field.name not in TRAIN_FLAGS:
            continue
        flag, default = "--" + field.name.replace("_", "-"), field.default
        if field.name in UNSET_BY_DEFAULT:
            default = None
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=TRAIN_FLAGS[field.name])
        else:
            kind = types.get(field.name, str if default is None else type(default))
            kind = _named if kind is str and field.name != "sample_prompt" else kind
            parser.add_argument(flag, type=kind, default=default, choices=choices.get(field.name),
                                help=TRAIN_FLAGS[field.name])
    for name, (kind, text) in MODEL_OVERRIDES.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
    parser.add_argument("--remat", action="store_true", default=None,
                        help="recompute each block's activations in the backward pass: less memory, longer steps")
    parser.add_argument("--loss-chunk", type=int, help="compute the LM head and the loss over this many positions at "
                        "a time, recomputed in the backward pass: no [batch, time, vocab] logits held, same loss")
    parser.add_argument("--no-xla", action="store_true", help="do not compile the train step with XLA")


def cmd_train(args: argparse.Namespace) -> int:
    from tf_gpt2.devices import given_process_index
    from tf_gpt2.tokenizer import checked_utf8
    from tf_gpt2.training import refuse_other_vocab, train

    checked_utf8("--sample-prompt", args.sample_prompt)
    if args.preset and args.init_from:
        raise ValueError(f"--preset sizes a new model; --init-from {args.init_from} has its own size: drop --preset")
    overrides = {k: getattr(args, k) for k in (*MODEL_OVERRIDES, "remat", "loss_chunk") if getattr(args, k) is not None}
    if args.vocab is not None:
        refuse_other_vocab(args.data, args.vocab)
    flags = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None
             or name not in UNSET_BY_DEFAULT}
    cfg = TrainConfig(out=args.out, model=overrides, jit_compile=not args.no_xla, **flags)
    # (the default's too: a short fine-tune; said by process 0 of many where the index is given, which JAX must not
    # be asked yet: on a TPU pod, where JAX finds it, by every host)
    if cfg.warmup_steps >= cfg.steps - 1 and given_process_index(cfg) == 0:
        flag = f"--warmup-steps {cfg.warmup_steps}" + (", its default" if args.warmup_steps is None else "")
        how = f", not {flag}" if cfg.warmup_steps > cfg.steps - 1 else f" ({flag})"
        steps = f"{cfg.steps - 1} step{'s' * (cfg.steps != 2)}"
        print(f"note: the learning rate warms up over {steps}{how}: the run's last step is at --learning-rate, with no "
              f"cosine decay (--steps {cfg.steps})", file=sys.stderr)
    train(cfg)  # (and writes OUT/model.keras)
    return 0


DEFAULT_NEW_TOKENS = 64  # `tf-gpt2 generate`'s, where the context holds them


def _prompt_of(args: argparse.Namespace) -> str:
    """The text to continue: the argument, or the whole text of --prompt-file (line ends and all; - reads standard
    input), read as `prepare` reads a text."""
    from tf_gpt2.data import read_text, shown
    from tf_gpt2.tokenizer import checked_utf8

    if args.prompt is not None and args.prompt_file is not None:
        raise ValueError("give the text to continue or --prompt-file, not both")
    if args.prompt_file is not None:
        text = read_text(args.prompt_file)
        if not text:  # (after the model's minutes of loading it said "prompt is empty", no file named)
            raise ValueError(f"{shown(args.prompt_file)} is empty: no prompt to continue")
        return text
    if not args.prompt:  # (an empty one was said after the model's minutes of loading)
        raise ValueError("the prompt is empty: give the text to continue, or --prompt-file FILE (- reads standard "
                         "input)")
    if args.prompt == "-":  # (it was continued as the text "-", standard input unread)
        raise ValueError("the prompt '-' reads nothing: give --prompt-file - to read the prompt from standard input")
    return checked_utf8("the prompt", args.prompt)


GENERATE_SETTINGS = ("temperature", "top_k", "top_p", "repetition_penalty", "seed", "max_new_tokens")
EVAL_SETTINGS = ("context", "stride", "batch_size")


def _as_flags(message: str, settings: Sequence[str] = GENERATE_SETTINGS) -> str:
    """A command's message with its settings named as the flags that gave them (top_p: --top-p)."""
    return re.sub(rf"(?<![-\w])({'|'.join(settings)})\b", lambda m: "--" + m[1].replace("_", "-"), message)


def cmd_generate(args: argparse.Namespace) -> int:
    from tf_gpt2.data import shown
    from tf_gpt2.generation import check_settings, default_stop_ids, stream
    from tf_gpt2.tokenizer import check_output_writes, tokenizer_for

    prompt = _prompt_of(args)
    if args.seed is not None and args.temperature == 0:
        raise ValueError("--seed sets the sampling noise, and --temperature 0 (greedy, the default) samples nothing: "
                         "give a --temperature > 0")
    if args.max_new_tokens is not None:  # (None: as many as fit, up to 64)
        _check_max_new_tokens(args.max_new_tokens)
    try:  # before the model loads
        check_settings(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.seed)
    except ValueError as e:
        raise ValueError(_as_flags(str(e))) from None
    model = _load_model(args)
    tokenizer = tokenizer_for(model.config)  # the one `stream` reads the prompt with
    check_output_writes(model.config.characters)
    source = f"{shown(args.prompt_file)}: " if args.prompt_file is not None else ""  # (errors named no file)
    try:
        held = len(tokenizer.encode(prompt))
    except ValueError as e:  # a character the model does not know
        raise ValueError(f"{source}{e}") from None
    context, max_new_tokens = model.config.n_positions, args.max_new_tokens
    room = context - held
    if held and room < 1:  # (an empty prompt: `stream` refuses it)
        raise ValueError(f"{source}the prompt's {held} tokens fill the model's context of {context} positions: give "
                         f"a prompt of at most {context - 1}")
    if max_new_tokens is None:  # (64 failed on a model of 64 positions, the demo's)
        max_new_tokens = min(DEFAULT_NEW_TOKENS, max(room, 1))
        if held and room < DEFAULT_NEW_TOKENS:
            print(f"note: {room} new tokens, not {DEFAULT_NEW_TOKENS}: the context of {context} holds that many "
                  "after the prompt", file=sys.stderr)
    decode, stop_ids = tokenizer.decode, default_stop_ids(model.config)
    drawn = args.seed is None and args.temperature > 0  # a fresh sample each run, said (once the call is taken)
    seed = random.randrange(2**31) if drawn else args.seed  # so that it can be written again
    # The prompt is shown with the first new token: by then prefill and the decode step are compiled, so
    # XLA's start-up lines on stderr come before the text, not in the middle of it.
    try:
        tokens_of = stream(model, prompt, max_new_tokens=max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                           seed=seed, stop_ids=stop_ids)
    except ValueError as e:  # the prompt too long for --max-new-tokens: said of its file too
        raise ValueError(f"{source}{_as_flags(str(e))}" if max_new_tokens > room else _as_flags(str(e))) from None
    if drawn:
        print(f"note: sampling with --seed {seed} (a new one each run; give it to write this text again)",
              file=sys.stderr)
    tokens, printed = [], None
    for token in tokens_of:
        if printed is None:
            print(prompt, end="", flush=True)
            printed = ""
        if token in stop_ids:
            break
        tokens.append(token)
        text = decode(tokens)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(printed):], end="", flush=True)
            printed = text
    print(decode(tokens)[len(printed or ""):])
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from tf_gpt2 import GPT2
    from tf_gpt2.checkpoints import files_read_instead
    from tf_gpt2.files import save_keras

    refuse_writing_over_inputs(args.dst, args.src)
    suffix = os.path.splitext(args.dst.rstrip(os.sep))[1]
    if suffix.lower() in MODEL_FILE_SUFFIXES and suffix != ".keras":
        raise ValueError(f"{args.dst} names a {suffix} file, but convert writes a .keras file (that suffix, in lower "
                         "case, as Keras reads it) or a Hugging Face folder (config.json, model.safetensors)")
    if suffix == ".keras" and args.dst.endswith(os.sep):  # (it wrote a Hugging Face folder named so)
        raise ValueError(f"{args.dst} ends in {os.sep}, a folder's mark, but a .keras name: drop the {os.sep} for a "
                         ".keras file, or give a Hugging Face folder another name")
    folder = not args.dst.endswith(".keras")
    if not folder:
        refuse_replacing_another_kind(args.dst, "keras")
    if folder and os.path.exists(args.dst) and not os.path.isdir(args.dst):  # before reading the source
        raise NotADirectoryError(f"Not a directory (a Hugging Face checkpoint is a folder; a .keras DST is a file): "
                                 f"{args.dst}")
    if folder:
        refuse_a_dataset_or_run(args.dst, "a Hugging Face checkpoint")
    model = GPT2.from_pretrained(args.src, revision=args.revision)
    if folder:  # replaced: what save_pretrained writes, or removes as a reader would take it instead
        replaced = os.path.isdir(args.dst) and (bool(files_read_instead(args.dst, [])) or any(
            os.path.isfile(os.path.join(args.dst, name)) for name in ("config.json", "model.safetensors")))
        written = f"{'replaced the earlier' if replaced else 'wrote'} {args.dst}"
        model.save_pretrained(args.dst)
    else:
        written = _written(args.dst)
        make_folders(os.path.dirname(os.path.abspath(args.dst)))  # (as save_pretrained, export, train)
        save_keras(model, args.dst)
    print(written)
    return 0


def _named(text: str) -> str:
    """A path or name: an empty one (an unset shell variable) would fall back to a default without a word."""
    if not text:
        raise argparse.ArgumentTypeError("an empty value names nothing")
    return text


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


WRITES = {"saved_model": "a SavedModel folder", "tflite": "a plain LiteRT model (.tflite)",
          "litertlm": "a LiteRT-LM package (.litertlm)"}


def _export_format(args: argparse.Namespace) -> str:
    """--format, else the one `--out`'s suffix names (.tflite, .litertlm; else a SavedModel). An out path whose
    suffix names another format, and the other format's flags, are refused rather than ignored."""
    suffix = os.path.splitext((args.out or "").rstrip(os.sep))[1]
    named = ON_DEVICE_SUFFIXES.get(suffix.lower())
    chosen = args.format or named or FORMATS[0]
    if named not in (None, chosen):
        raise ValueError(f"--out {args.out} names {WRITES[named]}, but --format {chosen} writes {WRITES[chosen]}: "
                         "give --out that format's suffix, or leave --format out")
    if chosen == "saved_model" and suffix.lower() in MODEL_FILE_SUFFIXES:  # (it made a folder of that name)
        raise ValueError(f"--out {args.out} names a {suffix} file, but --format saved_model writes a folder (its "
                         "version inside): give a folder's name" + " (a .keras file: tf-gpt2 convert)" * (
                             suffix.lower() == ".keras"))
    if chosen != "saved_model" and (args.out or "").endswith(os.sep):  # (a .litertlm/ was a SavedModel's folder)
        raise ValueError(f"--out {args.out} ends in {os.sep}, a folder's mark, but --format {chosen} writes a file: "
                         f"drop the {os.sep}")
    given = {"--dtype": args.dtype != "float32", "--xla": args.xla, "--version": args.version is not None,
             "--max-new-tokens-limit": args.max_new_tokens_limit is not None,
             "--max-text-bytes": args.max_text_bytes is not None, "--max-word-bytes": args.max_word_bytes is not None,
             "--quantize": args.quantize != QUANTIZATIONS[0], "--cache-length": args.cache_length is not None,
             "--prefill-lengths": args.prefill_lengths is not None}
    saved_model_flags = ("--dtype", "--xla", "--version", "--max-new-tokens-limit", "--max-text-bytes",
                         "--max-word-bytes")
    misplaced = [flag for flag, was_given in given.items()
                 if was_given and (flag in saved_model_flags) != (chosen == "saved_model")]
    if misplaced:
        meant = "--format saved_model" if misplaced[0] in saved_model_flags else "on-device files (tflite, litertlm)"
        raise ValueError(f"{misplaced[0]} is for {meant}, not --format {chosen}")
    return chosen


EXPORT_SETTINGS = ("max_new_tokens_limit", "max_text_bytes", "max_word_bytes", "cache_length", "prefill_lengths")


def cmd_export(args: argparse.Namespace) -> int:
    try:
        return _export(args)
    except ValueError as e:  # the export's settings named as the flags that gave them (--version's, where it starts)
        raise ValueError(re.sub(r"^version\b", "--version", _as_flags(str(e), EXPORT_SETTINGS))) from None


def _export(args: argparse.Namespace) -> int:
    from tf_gpt2.export import export_saved_model

    kind = _export_format(args)
    default = os.path.join("saved_models", "gpt2" if kind == "saved_model" else f"gpt2.{kind}")
    out = args.out or default
    refuse_writing_over_inputs(out, args.model)
    if kind == "saved_model":  # (a version folder added, nothing replaced)
        refuse_a_dataset_or_run(out, "a SavedModel")
        limits = {name: getattr(args, name) for name in ("max_text_bytes", "max_word_bytes")
                  if getattr(args, name) is not None}
        path = export_saved_model(_load_model(args), out, version=args.version, dtype=args.dtype, xla=args.xla,
                                  max_new_tokens_limit=args.max_new_tokens_limit, **limits)
        print(f"wrote {path}")
        return 0
    from tf_gpt2 import litert

    litert.check_writable(out, kind)  # (before the model loads; the export checks it too)
    written, model = _written(out), _load_model(args)
    settings = dict(cache_length=args.cache_length, prefill_lengths=args.prefill_lengths, quantize=args.quantize)
    if kind == "tflite":
        litert.export_litert(model, out, **settings)
    else:
        litert.export_litertlm(model, out, **settings)
        budget = litert.token_budget(model, args.cache_length, args.prefill_lengths)
        written += (f": LiteRT-LM holds {budget} tokens in a conversation, its prompts and answers together (a "
                    "prompt past them fails; an answer past them ends short, without an error)")
    print(written)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from tf_gpt2.data import read_text, shown
    from tf_gpt2.evaluation import check_windows, evaluate

    def check(n_positions: int | None = None) -> None:
        try:
            check_windows(args.context, args.stride, args.batch_size, n_positions)
        except ValueError as e:
            raise ValueError(_as_flags(str(e), EVAL_SETTINGS)) from None

    check()  # before the model loads (its context bounds --context after)
    text = read_text(args.file)  # as prepare reads it: a CRLF file keeps its \r, a .gz is decompressed
    if not text:  # (said after the model's loading)
        raise ValueError(f"{shown(args.file)} is empty: nothing to score")
    model = _load_model(args)
    check(model.config.n_positions)
    result = evaluate(model, text, context=args.context, stride=args.stride, batch_size=args.batch_size,
                      detokenize=args.detokenize, verbose=not args.json, source=shown(args.file))
    report = {"file": args.file, "tokens": result.tokens, "bytes": result.bytes, "loss": result.loss,
              "perplexity": result.perplexity if math.isfinite(result.perplexity) else None,  # JSON has no inf
              "bits_per_byte": result.bits_per_byte}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{shown(args.file)}: {result.tokens:,} tokens, {result.bytes:,} bytes\n"
              f"loss {result.loss:.4f} nats/token  perplexity {result.perplexity:.3f}  "
              f"bits/byte {result.bits_per_byte:.4f}")
    return 0


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=_named, help="GPT-2 to load: a Hugging Face repo name (gpt2, "
                        "openai-community/gpt2-medium, hf://org/name), a keras-hub preset name (gpt2_base_en), an HF "
                        "dir, OpenAI TF dir, keras-hub preset dir or .keras file")
    parser.add_argument("--revision", type=_named, help="branch, tag or commit of a Hugging Face repo name")
    parser.add_argument("--random-init", metavar="PRESET", choices=sorted(PRESETS),
                        help="use an untrained model of this preset instead of --model (for trying the pipeline)")


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, except where there is none to show or the text says it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# Commands that read no model: the console script runs them without the package's `__init__`, so without Keras and
# TensorFlow (`tf-gpt2 prepare` took 5 s to load them, and 0.3 s without), where they draw no progress bar (Keras'
# bar, in a terminal, loads them).
WITHOUT_TENSORFLOW = frozenset({"prepare"})


def _installed_version() -> str:
    """The installed package's version (a checkout run without installing it has none: every command still runs)."""
    try:
        return importlib.metadata.version("tf_gpt2")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: run from a checkout)"


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors of a word read as flags ("-hello": `-h` given "ello") say where such words
    go."""

    def error(self, message: str):
        if given := re.match(r"argument -h/--help: ignored explicit argument '(.*)'$", message):
            word = "-h" + given[1]
        else:
            unknown = re.match(r"unrecognized arguments: (.*)", message)
            word = next((w for w in unknown[1].split() if re.match(r"-[^-]", w)), None) if unknown else None
        if word:
            message += f" (if {word} is a prompt or a path, give it after --: ... -- {shlex.quote(word)})"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tf-gpt2", description="GPT-2 in Keras 3 / TensorFlow.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    command = functools.partial(commands.add_parser, formatter_class=_ShowDefaults)

    demo = command("demo", help="train a small GPT on the embedded Shakespeare for a minute or two, then generate")
    demo.add_argument("--out", type=_named, default="runs/demo", help="run directory (checkpoints, TensorBoard logs)")
    demo.add_argument("--steps", type=int, default=2400, help="optimizer steps")
    demo.add_argument("--prompt", default="ROMEO:\n",
                      help="text the model continues (default: 'ROMEO:' and a line break)")
    demo.add_argument("--max-new-tokens", type=int, default=320, help="characters to generate")
    demo.add_argument("--resume-with-changes", action="store_true", help=TRAIN_FLAGS["resume_with_changes"])
    demo.set_defaults(run=cmd_demo)

    prep = command("prepare", help="tokenize text files into uint16 shards + manifest.json")
    prep.add_argument("inputs", nargs="*", type=_named,
                      help="text files, folders or globs (.txt or .txt.gz); default: the embedded corpus")
    prep.add_argument("--out", type=_named, required=True, help="output directory")
    prep.add_argument("--val-fraction", type=float, default=0.1,
                      help="last fraction of the text kept for validation (files in the order named; a folder's or a "
                      "glob's sorted by path)")
    prep.add_argument("--vocab", default=VOCABS[0], choices=VOCABS, help="GPT-2 BPE or characters")
    prep.set_defaults(run=cmd_prepare)

    tr = command("train", help="train or fine-tune with model.fit; rerun the same command to resume")
    tr.add_argument("--out", type=_named, required=True, help="run directory: checkpoint, logs, model.keras")
    _add_train_flags(tr)
    tr.set_defaults(run=cmd_train)

    gen = command("generate", help="continue a prompt, printing tokens as they come")
    _model_flags(gen)
    gen.add_argument("prompt", nargs="?", help="text to continue (after -- where it starts with -)")
    gen.add_argument("--prompt-file", type=_named, metavar="FILE", help="continue the whole text of this UTF-8 file "
                     "instead (.gz read decompressed), line ends and all; - reads standard input")
    gen.add_argument("--max-new-tokens", type=int, help="tokens to generate at most (default: 64, or as many as the "
                     "model's context holds after the prompt, with a note)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    gen.add_argument("--repetition-penalty", type=float, default=1.0,
                     help="CTRL's penalty on repeated tokens (1 = off)")
    gen.add_argument("--seed", type=int,
                     help="seed of the sampling noise, with --temperature > 0 (default: a new one each run, printed)")
    gen.set_defaults(run=cmd_generate)

    convert = command("convert", help="convert a checkpoint to a HF dir or a .keras file")
    convert.add_argument("src", type=_named, help="Hugging Face repo name (gpt2, org/name), keras-hub preset name, "
                                                  "HF dir, OpenAI TF dir, keras-hub preset dir or .keras file")
    convert.add_argument("--revision", type=_named, help="branch, tag or commit of a Hugging Face repo name")
    convert.add_argument("dst", type=_named, help="output: a directory (HF format) or a path ending in .keras")
    convert.set_defaults(run=cmd_convert)

    export = command("export", help="export for TF Serving (SavedModel) or phones (LiteRT-LM / LiteRT)")
    _model_flags(export)
    export.add_argument("--format", choices=FORMATS,
                        help="saved_model (TF Serving), litertlm (LiteRT-LM package) or tflite (its model alone); "
                        "default: the one --out's suffix names (.litertlm, .tflite), else saved_model")
    export.add_argument("--out", type=_named,
                        help="SavedModel base dir (a numbered version is added), or .litertlm/.tflite path (default: "
                        "saved_models/gpt2, or saved_models/gpt2.litertlm / .tflite)")
    export.add_argument("--version", type=int,
                        help="SavedModel version (default: one past the highest there; 1 in a new folder)")
    export.add_argument("--max-new-tokens-limit", type=int,
                        help="SavedModel: largest max_new_tokens (default 256, or n_positions if smaller)")
    export.add_argument("--max-text-bytes", type=int,
                        help="SavedModel: longest text a row may send, in UTF-8 bytes (default 8 per context position)")
    export.add_argument("--max-word-bytes", type=int,
                        help="SavedModel: longest word of the in-graph tokenizer, in bytes (default 256)")
    export.add_argument("--cache-length", type=int, help="on-device: KV-cache positions (default n_positions)")
    export.add_argument("--prefill-lengths", type=_int_list,
                        help="on-device: comma-separated prefill chunk lengths (default: those of 8,32,128 at most a "
                             "quarter of the cache, else 1)")
    export.add_argument("--quantize", default=QUANTIZATIONS[0], choices=QUANTIZATIONS,
                        help="on-device weights (int8: dynamic range)")
    export.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="SavedModel weights and arithmetic (bfloat16: half the memory; on avx512_bf16 "
                        "the fastest at batch 32, the slowest at batch 1)")
    export.add_argument("--xla", action="store_true",
                        help="SavedModel: decode under XLA (faster at batch 1 and 8; the server needs "
                        "--xla_cpu_compilation_enabled)")
    export.set_defaults(run=cmd_export)

    ev = command("eval", help="perplexity and bits/byte on a text file (GPT-2 paper protocol)")
    _model_flags(ev)
    ev.add_argument("file", type=_named, help="UTF-8 text file (.gz read decompressed; - reads standard input)")
    ev.add_argument("--context", type=int, help="tokens each prediction sees at most (default n_positions)")
    ev.add_argument("--stride", type=int, help="window step (default context // 2)")
    ev.add_argument("--batch-size", type=int, default=8, help="windows per forward pass, at most")
    ev.add_argument("--detokenize", default="none", choices=sorted(DETOKENIZERS),
                    help="undo WikiText tokenization before scoring, as in the GPT-2 paper")
    ev.add_argument("--json", action="store_true", help="print one JSON line")
    ev.set_defaults(run=cmd_eval)

    return parser


# Errors whose message is said without their type's name: it reads as a sentence on its own.
PLAIN_ERRORS = (ValueError, TypeError, OSError, RuntimeError, FloatingPointError)


def _tensorflow_message(message: str) -> str:
    """A TensorFlow error's message without TensorFlow's wrapping (where in the Python code the graph was built,
    node and op tags, its hint on allocation reports), and for a Python error raised inside an op (tf.data's
    numpy_function) that error's own last line, not its traceback."""
    raised = re.findall(r"^\w+: .*$", message.partition("Traceback (most recent call last)")[2], re.MULTILINE)
    if raised:
        said_plainly = "|".join(kind.__name__ for kind in PLAIN_ERRORS)
        message = re.sub(rf"^({said_plainly}): ", "", raised[-1])
    message = re.sub(r"^Graph execution error:\s*|^Detected at node .* defined at \(most recent call last\):\n"
                     r"(?:\s*File .*\n)*|^Hint: If you want to see a list of allocated tensors.*$", "", message,
                     flags=re.MULTILINE)
    return re.sub(r"\{\{[^}]*\}\}|\[\[[^\]]*\]\]|\[Op:\w+\]", " ", message)


def _out_of_memory(error: BaseException) -> bool:
    """A failed allocation: Python's, or TensorFlow's or XLA's (whose RESOURCE_EXHAUSTED also says a full disk)."""
    return isinstance(error, MemoryError) or (
        (type(error).__name__ == "ResourceExhaustedError" or "RESOURCE_EXHAUSTED" in str(error))
        and re.search(r"out of memory|\bOOM\b|(failed|trying) to allocate", str(error), re.IGNORECASE) is not None)


def describe_error(error: BaseException) -> str:
    """One line naming the problem (and the file, where the error knows it)."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.strerror}: {error.filename}"
    elif type(error).__module__.startswith("tensorflow") and hasattr(error, "message"):
        text = _tensorflow_message(error.message)
    else:
        text = str(error) or type(error).__name__
        if not isinstance(error, PLAIN_ERRORS):
            text = f"{type(error).__name__}: {text}"
    return " ".join(text.split())


def _output_closed() -> bool:
    """Whether standard output's reader stopped reading (`| head`: the pipe reports an error to a poll); if so, what
    is left for it goes nowhere, so that nothing more fails on the way out."""
    import select

    try:
        fd = sys.stdout.fileno()
        events = select.poll()
        events.register(fd, select.POLLOUT)
        if not any(event & select.POLLERR for _, event in events.poll(0)):
            return False
    except (OSError, ValueError, AttributeError):  # no descriptor (a StringIO) or no poll: not a closed pipe
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True


@contextlib.contextmanager
def _named_standard_output():
    """A failed write to standard output said as one (`> /dev/full` read as the dataset's disk being full)."""
    try:
        yield
    except BrokenPipeError:  # (its reader stopped: see _output_closed)
        raise
    except OSError as e:
        if e.filename is not None or e.strerror is None:
            raise
        raise OSError(e.errno, e.strerror, "standard output") from None


class _LineEnds:
    """Standard output as it was, remembering whether its last write ended its line (a Keras progress bar's does
    not: it starts each update with the line break), so that a failure's line can start a line of its own."""

    def __init__(self, stream):
        self.stream, self.mid_line = stream, False

    def write(self, text: str) -> int:
        if text:
            self.mid_line = not text.endswith("\n")
        with _named_standard_output():
            return self.stream.write(text)

    def flush(self) -> None:
        with _named_standard_output():
            self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


PACKAGE = os.path.dirname(os.path.abspath(__file__))


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; every failure ends in one line of its own and exit status 2."""
    stdout = sys.stdout = _LineEnds(sys.stdout) if sys.stdout is not None else None  # (None: closed, `>&-`)
    formatted = warnings.formatwarning  # a warning of ours is a line of the command's, not a source line of ours

    def as_line(message, category, filename, *where) -> str:
        if not os.path.abspath(filename).startswith(PACKAGE + os.sep):  # another library's: as Python shows it
            return formatted(message, category, filename, *where)
        return f"tf-gpt2 {args.command}: warning: {message}" + \
            (f" ({category.__name__})" if category is not UserWarning else "") + "\n"
    warnings.formatwarning = as_line
    try:
        return args.run(args)
    except (Exception, KeyboardInterrupt) as e:  # every failure ends in one line; TF_GPT2_TRACEBACK=1 shows where
        if isinstance(e, BrokenPipeError) and _output_closed():
            return 1
        if stdout is not None and stdout.mid_line:
            with contextlib.suppress(OSError, ValueError):
                print(flush=True)
        if isinstance(e, KeyboardInterrupt):
            print(f"tf-gpt2 {args.command}: interrupted", file=sys.stderr)
            return 130
        out_of_memory = _out_of_memory(e)
        hint = " (lower --batch-size, with --grad-accum to keep the batch, or --block-size; --remat and --loss-chunk " \
            "keep less per step)" if out_of_memory and args.command == "train" else ""
        if "'F16_F16_F32' is not supported by dot_general on CPU" in str(e):  # (a float16 model's eval, on JAX)
            from tf_gpt2.devices import FLOAT16_ON_A_JAX_CPU

            hint = f" ({FLOAT16_ON_A_JAX_CPU})"
        print(f"tf-gpt2 {args.command}: error: {describe_error(e)}{hint}", file=sys.stderr)
        if os.environ.get("TF_GPT2_TRACEBACK"):
            traceback.print_exc()
        if out_of_memory and getattr(args, "whole_process", False):
            # After a failed allocation TensorFlow's heap can be corrupt: the interpreter's ordinary exit then aborts
            # ("double free", status 134) as it frees it. The command has said what it had to; the process ends here.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2
    finally:
        warnings.formatwarning = formatted
        if stdout is not None:
            sys.stdout = stdout.stream


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.whole_process = argv is None  # the command line's own: the command is the process (see run)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
