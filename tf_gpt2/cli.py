"""The `tf-gpt2` command line: demo, generate, convert, export."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output


def _load_model(args: argparse.Namespace):
    from tf_gpt2 import GPT2, GPT2Config

    if args.model:
        return GPT2.from_pretrained(args.model)
    return GPT2(GPT2Config.from_preset(args.preset))


def cmd_demo(args: argparse.Namespace) -> int:
    from tf_gpt2 import GPT2Tokenizer

    model = _load_model(args)
    print(f"model: {model.config.n_layer} layers, {model.config.n_head} heads, "
          f"{model.config.n_embd} wide, {model.count_params():,} parameters")
    text = model.generate(args.prompt, max_new_tokens=args.max_new_tokens, tokenizer=GPT2Tokenizer())
    print(args.prompt + text)
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

    model = GPT2.from_pretrained(args.src)
    if args.dst.endswith(".keras"):
        model.save(args.dst)
    else:
        model.save_pretrained(args.dst)
    print(f"wrote {args.dst}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tf_gpt2.export import FORMATS, export_litert, export_saved_model

    if args.format not in FORMATS:
        raise ValueError(f"unknown export format {args.format!r}; choose one of {FORMATS}")
    model = _load_model(args)
    if args.format == "saved_model":
        out = args.out or os.path.join("saved_models", "gpt2")
        path = export_saved_model(model, out, version=args.version, max_new_tokens_limit=args.max_new_tokens_limit)
    else:
        path = export_litert(model, args.out or os.path.join("saved_models", "gpt2.tflite"),
                             max_length=args.max_length, quantize=args.quantize)
    print(f"wrote {path}")
    return 0


def _model_flags(parser: argparse.ArgumentParser, default_preset: str) -> None:
    parser.add_argument("--model", help="checkpoint to load: HF dir, OpenAI TF dir, keras-hub preset dir or .keras file")
    parser.add_argument("--preset", default=default_preset, help="random-init preset when --model is not given")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tf-gpt2", description="GPT-2 in Keras 3 / TensorFlow.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build a model and print a greedy continuation of a prompt")
    _model_flags(demo, "gpt2-tiny")
    demo.add_argument("--prompt", default="To be, or not to be")
    demo.add_argument("--max-new-tokens", type=int, default=32)
    demo.set_defaults(run=cmd_demo)

    gen = sub.add_parser("generate", help="continue a prompt, printing tokens as they come")
    _model_flags(gen, "gpt2-tiny")
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

    export = sub.add_parser("export", help="export for TF Serving (SavedModel) or phones (LiteRT)")
    _model_flags(export, "gpt2-tiny")
    export.add_argument("--format", default="saved_model", help="saved_model or tflite")
    export.add_argument("--out", help="SavedModel base dir (a numbered version is added) or .tflite path")
    export.add_argument("--version", type=int, help="SavedModel version (default: next free number)")
    export.add_argument("--max-new-tokens-limit", type=int, default=256, help="SavedModel: largest max_new_tokens")
    export.add_argument("--max-length", type=int, help="LiteRT: KV-cache length (default n_positions)")
    export.add_argument("--quantize", default="fp32", help="LiteRT: fp32, fp16 or int8 (dynamic range)")
    export.set_defaults(run=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"tf-gpt2 {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
