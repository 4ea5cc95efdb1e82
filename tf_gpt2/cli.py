"""The `tf-gpt2` command line: demo, prepare, train, generate, convert, export, eval."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output


def _load_model(args: argparse.Namespace):
    from tf_gpt2 import GPT2, GPT2Config

    if args.model:
        return GPT2.from_pretrained(args.model)
    if args.random_init:
        return GPT2(GPT2Config.from_preset(args.random_init))
    raise ValueError("no --model given: pass a checkpoint (HF dir, OpenAI TF dir, keras-hub preset dir or .keras "
                     "file), or --random-init PRESET for an untrained model")


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small character-level GPT on the embedded Shakespeare, then let it write."""
    from tf_gpt2.training import TrainConfig, codec, train

    cfg = TrainConfig(
        out=args.out, vocab="char", preset="gpt2-tiny", model=dict(n_layer=4, n_head=4, n_embd=128, n_positions=256),
        steps=args.steps, batch_size=8, block_size=256, learning_rate=3e-3, min_learning_rate=3e-4,
        warmup_steps=20, eval_interval=max(1, args.steps // 4), eval_batches=5, weight_decay=0.1,
        sample_tokens=0,
    )
    model, _ = train(cfg)
    from tf_gpt2.data import TokenShards

    encode, decode = codec(TokenShards(f"{cfg.out}/data", "train").manifest)
    prompt = encode(args.prompt)
    new = model.generate(prompt, max_new_tokens=args.max_new_tokens, temperature=0.8, top_k=20, seed=0)
    print(f"\n{model.count_params():,} parameters, {args.steps} steps. The model writes:\n")
    print(decode(prompt + new))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from tf_gpt2.data import embedded_corpus, prepare

    manifest = prepare(args.inputs or embedded_corpus(), args.out, val_fraction=args.val_fraction, vocab=args.vocab)
    for split, shards in manifest["splits"].items():
        print(f"{split}: {sum(s['tokens'] for s in shards):,} tokens in {len(shards)} shard(s)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tf_gpt2.files import save_keras
    from tf_gpt2.training import TrainConfig, train

    overrides = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "n_positions", "dropout", "vocab_multiple")
                 if getattr(args, k) is not None}
    cfg = TrainConfig(
        out=args.out, data=args.data, vocab=args.vocab, preset=args.preset, model=overrides,
        init_from=args.init_from, steps=args.steps, batch_size=args.batch_size, block_size=args.block_size,
        learning_rate=args.learning_rate, min_learning_rate=args.min_learning_rate,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        grad_accum=args.grad_accum, eval_interval=args.eval_interval, eval_batches=args.eval_batches,
        seed=args.seed, precision=args.precision, jit_compile=not args.no_xla,
        steps_per_execution=args.steps_per_execution, lora_rank=args.lora_rank, strategy=args.strategy,
        sample_prompt=args.sample_prompt, sample_tokens=args.sample_tokens,
        resume_with_changes=args.resume_with_changes,
    )
    model, _ = train(cfg)
    save_keras(model, os.path.join(args.out, "model.keras"))
    print(f"saved {os.path.join(args.out, 'model.keras')}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from tf_gpt2 import GPT2Tokenizer
    from tf_gpt2.generation import stream

    model, tok = _load_model(args), GPT2Tokenizer()
    print(args.prompt, end="", flush=True)
    tokens, shown = [], ""
    for token in stream(model, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                        seed=args.seed, tokenizer=tok):
        if token == tok.eot_id:
            break
        tokens.append(token)
        text = tok.decode(tokens)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(shown):], end="", flush=True)
            shown = text
    print(tok.decode(tokens)[len(shown):])
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from tf_gpt2 import GPT2
    from tf_gpt2.files import save_keras

    model = GPT2.from_pretrained(args.src)
    if args.dst.endswith(".keras"):
        save_keras(model, args.dst)
    else:
        model.save_pretrained(args.dst)
    print(f"wrote {args.dst}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_export(args: argparse.Namespace) -> int:
    from tf_gpt2.export import FORMATS, export_saved_model

    if args.format not in FORMATS:
        raise ValueError(f"unknown export format {args.format!r}; choose one of {FORMATS}")
    if args.format == "saved_model":
        model = _load_model(args)
        out = args.out or os.path.join("saved_models", "gpt2")
        path = export_saved_model(model, out, version=args.version, max_new_tokens_limit=args.max_new_tokens_limit)
    else:
        from tf_gpt2 import litert

        export = litert.export_litert if args.format == "tflite" else litert.export_litertlm
        litert.check_quantization(args.quantize)  # before loading the model
        path = export(_load_model(args), args.out or os.path.join("saved_models", f"gpt2.{args.format}"),
                      cache_length=args.cache_length, prefill_lengths=args.prefill_lengths, quantize=args.quantize)
    print(f"wrote {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from tf_gpt2.evaluation import evaluate

    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{args.file} is not UTF-8 text ({e})") from None
    model = _load_model(args)
    result = evaluate(model, text, context=args.context, stride=args.stride, batch_size=args.batch_size,
                      detokenize=args.detokenize)
    report = {"file": args.file, "tokens": result.tokens, "bytes": result.bytes, "loss": result.loss,
              "perplexity": result.perplexity, "bits_per_byte": result.bits_per_byte}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.file}: {result.tokens:,} tokens, {result.bytes:,} bytes\n"
              f"loss {result.loss:.4f} nats/token  perplexity {result.perplexity:.3f}  "
              f"bits/byte {result.bits_per_byte:.4f}")
    return 0


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint to load: HF dir, OpenAI TF dir, keras-hub preset dir or .keras file")
    parser.add_argument("--random-init", metavar="PRESET",
                        help="use an untrained model of this preset instead of --model (for trying the pipeline)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tf-gpt2", description="GPT-2 in Keras 3 / TensorFlow.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small GPT on the embedded Shakespeare for a few minutes, then generate")
    demo.add_argument("--out", default="runs/demo", help="run directory (checkpoints, TensorBoard logs)")
    demo.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    demo.add_argument("--prompt", default="ROMEO:\n", help="text the model continues")
    demo.add_argument("--max-new-tokens", type=int, default=240, help="characters to generate (prompt + these <= 256)")
    demo.set_defaults(run=cmd_demo)

    prep = sub.add_parser("prepare", help="tokenize text files into uint16 shards + manifest.json")
    prep.add_argument("inputs", nargs="*", help="text files, folders or globs (.txt or .txt.gz); default: the embedded corpus")
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--val-fraction", type=float, default=0.1, help="last fraction of the text kept for validation")
    prep.add_argument("--vocab", default="gpt2", choices=["gpt2", "char"], help="GPT-2 BPE or characters")
    prep.set_defaults(run=cmd_prepare)

    tr = sub.add_parser("train", help="train or fine-tune with model.fit; rerun the same command to resume")
    tr.add_argument("--data", help="prepared dir, or text file/folder/glob (default: embedded Shakespeare)")
    tr.add_argument("--out", required=True, help="run directory: checkpoint, logs, model.keras")
    tr.add_argument("--vocab", default="gpt2", choices=["gpt2", "char"], help="tokenization of raw --data")
    tr.add_argument("--preset", default="gpt2-mini", help="model size when not --init-from")
    for flag, kind, text in (("--n-layer", int, "layers"), ("--n-head", int, "attention heads"),
                             ("--n-embd", int, "width"), ("--n-positions", int, "context length"),
                             ("--dropout", float, "dropout rate"),
                             ("--vocab-multiple", int, "token-embedding rounding (64: 50257 -> 50304 rows)")):
        tr.add_argument(flag, type=kind, help=f"override the preset's {text}")
    tr.add_argument("--init-from", help="fine-tune from a checkpoint (HF dir, OpenAI dir, keras-hub preset, .keras)")
    tr.add_argument("--steps", type=int, default=1000, help="optimizer steps in all")
    tr.add_argument("--batch-size", type=int, default=8, help="sequences per step (global, across replicas)")
    tr.add_argument("--block-size", type=int, default=256, help="tokens per sequence")
    tr.add_argument("--learning-rate", type=float, default=6e-4, help="peak learning rate after warmup")
    tr.add_argument("--min-learning-rate", type=float, help="learning rate at the end of the cosine "
                    "(default: --learning-rate / 10)")
    tr.add_argument("--warmup-steps", type=int, default=100, help="linear warmup steps")
    tr.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay on weights of rank >= 2")
    tr.add_argument("--grad-clip", type=float, default=1.0, help="global gradient-norm clip (0: off)")
    tr.add_argument("--grad-accum", type=int, default=1,
                    help="micro-batches of --batch-size accumulated per optimizer step (--steps counts steps)")
    tr.add_argument("--eval-interval", type=int, default=100, help="steps between validation/checkpoint/sample")
    tr.add_argument("--eval-batches", type=int, default=20, help="validation batches per evaluation")
    tr.add_argument("--seed", type=int, default=0, help="seed of init, dropout and data order")
    tr.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"],
                    help="Keras dtype policy (mixed_float16 adds loss scaling)")
    tr.add_argument("--no-xla", action="store_true", help="do not compile the train step with XLA")
    tr.add_argument("--steps-per-execution", type=int, default=1, help="steps per compiled call")
    tr.add_argument("--lora-rank", type=int, default=0, help="fine-tune only LoRA adapters of this rank")
    tr.add_argument("--strategy", choices=["mirrored", "multiworker", "tpu"], help="tf.distribute strategy")
    tr.add_argument("--sample-prompt", default="\n", help="prompt of the samples printed after each round")
    tr.add_argument("--sample-tokens", type=int, default=64, help="length of those samples (0: none)")
    tr.add_argument("--resume-with-changes", action="store_true",
                    help="resume the run in --out even though its settings or data changed")
    tr.set_defaults(run=cmd_train)

    gen = sub.add_parser("generate", help="continue a prompt, printing tokens as they come")
    _model_flags(gen)
    gen.add_argument("prompt", help="text to continue")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(run=cmd_generate)

    convert = sub.add_parser("convert", help="convert a checkpoint to a HF dir or a .keras file")
    convert.add_argument("src", help="HF dir, OpenAI TF dir, keras-hub preset dir or .keras file")
    convert.add_argument("dst", help="output: a directory (HF format) or a path ending in .keras")
    convert.set_defaults(run=cmd_convert)

    export = sub.add_parser("export", help="export for TF Serving (SavedModel) or phones (LiteRT-LM / LiteRT)")
    _model_flags(export)
    export.add_argument("--format", default="saved_model",
                        help="saved_model (TF Serving), litertlm (LiteRT-LM package) or tflite (its model alone)")
    export.add_argument("--out", help="SavedModel base dir (a numbered version is added), or .litertlm/.tflite path")
    export.add_argument("--version", type=int, help="SavedModel version (default: next free number)")
    export.add_argument("--max-new-tokens-limit", type=int, default=256, help="SavedModel: largest max_new_tokens")
    export.add_argument("--cache-length", type=int, help="on-device: KV-cache positions (default n_positions)")
    export.add_argument("--prefill-lengths", type=_int_list,
                        help="on-device: comma-separated prefill chunk lengths (default 8,32,128 where they fit)")
    export.add_argument("--quantize", default="fp32", help="on-device: fp32, fp16 or int8 (dynamic range)")
    export.set_defaults(run=cmd_export)

    ev = sub.add_parser("eval", help="perplexity and bits/byte on a text file (GPT-2 paper protocol)")
    _model_flags(ev)
    ev.add_argument("file", help="UTF-8 text file")
    ev.add_argument("--context", type=int, help="tokens each prediction sees at most (default n_positions)")
    ev.add_argument("--stride", type=int, help="window step (default context // 2)")
    ev.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    ev.add_argument("--detokenize", default="none", choices=["none", "wikitext"],
                    help="undo WikiText tokenization before scoring, as in the GPT-2 paper")
    ev.add_argument("--json", action="store_true", help="print one JSON line")
    ev.set_defaults(run=cmd_eval)

    return parser


def describe_error(error: BaseException) -> str:
    """One line naming the problem (and the file, where the error knows it)."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.strerror}: {error.filename}"
    elif type(error).__module__.startswith("tensorflow") and hasattr(error, "message"):
        text = error.message
    else:
        text = str(error) or type(error).__name__
        if not isinstance(error, (ValueError, TypeError, OSError, RuntimeError, FloatingPointError)):
            text = f"{type(error).__name__}: {text}"
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"tf-gpt2 {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every failure ends in one line; TF_GPT2_TRACEBACK=1 shows where
        print(f"tf-gpt2 {args.command}: error: {describe_error(e)}", file=sys.stderr)
        if os.environ.get("TF_GPT2_TRACEBACK"):
            traceback.print_exc()
        return 2


if __name__ == "__main__":
    sys.exit(main())
