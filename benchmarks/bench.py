"""Training and decode throughput of tf_gpt2 next to keras-hub, Hugging Face torch and a nanoGPT-style torch
model, each system in its own process, one after the other (see harness.py):

    python benchmarks/bench.py [--only train decode] [--systems tf_gpt2,hf,...] [--steps 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

import harness


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=["train", "decode"], help="run only these parts")
    parser.add_argument("--systems", help="comma-separated subset of: " + ", ".join(harness.SYSTEMS))
    parser.add_argument("--steps", type=int, help=f"timed training steps (default {harness.TrainSetup.steps})")
    parser.add_argument("--new-tokens", type=int, help=f"decoded tokens (default {harness.DecodeSetup.new_tokens})")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: checks the harness in under a minute")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    harness.refuse_earlier_results(parser, args.json)
    for flag, value in (("--steps", args.steps), ("--new-tokens", args.new_tokens)):
        if value is not None and value < 1:  # (0 ran the default)
            parser.error(f"{flag} must be a positive integer, got {value}")
    train, decode = (harness.SMOKE_TRAIN, harness.SMOKE_DECODE) if args.smoke else \
        (harness.TrainSetup(), harness.DecodeSetup())
    train = dataclasses.replace(train, steps=args.steps or train.steps)  # (given: positive)
    decode = dataclasses.replace(decode, new_tokens=args.new_tokens or decode.new_tokens)
    try:
        results = harness.run(args.only or ("train", "decode"), args.systems.split(",") if args.systems else None,
                              train=train, decode=decode, report=lambda line: print(line, flush=True))
    except ValueError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        harness.write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
