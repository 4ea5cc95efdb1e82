"""Batched generation as a server sees it: new tokens/s of the exported SavedModel's `generate` signature, run as
the stock tensorflow_model_server runs it (tf_serving.py: TF1 loader, a Session, XLA compilation off), next to
`model.generate` (XLA), Hugging Face torch's batched `generate` and CTranslate2's `generate_batch` (int8 and
float32), on the same random GPT-2 weights, each system and batch size in its own process, one after the other.

    python benchmarks/serving_throughput.py --json serving.json      # GPT-2 124M, batches 1, 8, 32
    python benchmarks/serving_throughput.py --smoke                  # tiny shapes: checks the harness

Every row is greedy, `--prompt` random tokens (a different prompt per row) and `--new` new tokens; tokens/s
counts the new tokens of the whole batch over the best of `--repeats` timed calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from harness import conditions, in_own_process, machine, refuse_earlier_results, torch_on_every_cpu, write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SYSTEMS = {
    "served": "tf_gpt2 SavedModel `generate`, as TF Serving runs it (Session, XLA off)",
    "served-bf16": "the same, exported with dtype bfloat16",
    "served-xla": "the same, exported with xla=True, served with --xla_cpu_compilation_enabled",
    "generate": "tf_gpt2 model.generate (XLA)",
    "hf": "HF transformers generate (torch)",
    "ct2-float32": "CTranslate2 generate_batch float32",
    "ct2-int8": "CTranslate2 generate_batch int8",
}


def _prompts(batch: int, length: int) -> list[list[int]]:
    import numpy as np

    return np.random.RandomState(0).randint(0, 50000, (batch, length)).tolist()


SERVED = {"served": (None, False), "served-bf16": ("bfloat16", False), "served-xla": (None, True)}  # dtype, XLA


def served_dir(work: str, system: str, new: int) -> str:
    """The SavedModel a served system runs: one per token limit (an export for fewer new tokens refuses every row)."""
    return os.path.join(work, f"{system.replace('-', '_')}-new{new}")


def prepare(work: str, preset: str, new: int) -> None:
    """Random GPT-2 weights (seed 0) as an HF dir, CTranslate2 int8/float32 dirs and a SavedModel version."""
    from on_device import prepare as prepare_hf_and_ct2

    prepare_hf_and_ct2(work, preset, caches=[], quantizations=[])
    import ctranslate2

    from tf_gpt2 import GPT2
    from tf_gpt2.export import export_saved_model

    if not os.path.exists(os.path.join(work, "ct2-float32")):
        ctranslate2.converters.TransformersConverter(os.path.join(work, "hf")).convert(
            os.path.join(work, "ct2-float32"), quantization="float32")
    for system, (dtype, xla) in SERVED.items():
        if not os.path.exists(os.path.join(served_dir(work, system, new), "1")):
            export_saved_model(GPT2.from_pretrained(os.path.join(work, "hf")), served_dir(work, system, new),
                               version=1, max_new_tokens_limit=new, dtype=dtype, xla=xla)



def measure(system: str, work: str, batch: int, prompt: int, new: int, repeats: int) -> dict:
    """New tokens/s of one system at one batch size, in this process."""
    import numpy as np
    from harness import best_seconds

    prompts = _prompts(batch, prompt)
    if system.startswith("served"):
        from tf_serving import Server, start

        start(xla=system == "served-xla")
        server = Server(os.path.join(served_dir(work, system, new), "1"))
        rows = lambda value, dtype: np.full(batch, value, dtype)  # noqa: E731
        inputs = dict(token_ids=np.array(prompts, np.int32), length=rows(prompt, np.int32),
                      max_new_tokens=rows(new, np.int32), temperature=rows(0, np.float32), top_k=rows(0, np.int32),
                      top_p=rows(1, np.float32), seed=rows(0, np.int32))
        began = time.perf_counter()
        answer = server.run("generate", inputs)
        refused = [error.decode() for error in answer["error"] if error]
        if refused:  # (a refused row would count as a row that stopped early)
            raise RuntimeError(f"{system} refused {len(refused)} of {batch} rows: {refused[0]}")
        produced = int(answer["length"].sum())  # rows stop early at <|endoftext|>
        first_call = time.perf_counter() - began  # with XLA: the bucket's compilation
        run = lambda: server.run("generate", inputs)  # noqa: E731
    elif system == "generate":
        from tf_gpt2 import GPT2

        model = GPT2.from_pretrained(os.path.join(work, "hf"))
        produced = batch * new
        run = lambda: model.generate(prompts, max_new_tokens=new, stop_ids=[])  # noqa: E731
    elif system == "hf":
        import torch
        import transformers

        torch_on_every_cpu()
        model = transformers.GPT2LMHeadModel.from_pretrained(os.path.join(work, "hf")).eval()
        ids = torch.tensor(prompts)
        produced = batch * new

        def run():
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=0)
    else:
        import ctranslate2

        from tf_gpt2.tokenizer import default_vocab_files

        with open(default_vocab_files()[0], encoding="utf-8") as f:
            pieces = {i: piece for piece, i in json.load(f).items()}
        start_tokens = [[pieces[i] for i in p] for p in prompts]
        generator = ctranslate2.Generator(os.path.join(work, system), device="cpu", intra_threads=os.cpu_count())
        produced = batch * new
        run = lambda: generator.generate_batch(start_tokens, max_length=new, min_length=new,  # noqa: E731
                                               sampling_topk=1, include_prompt_in_result=False)
    seconds = best_seconds(run, repeats)
    return {"tokens_per_second": produced / seconds, "new_tokens": produced,
            **({"first_call_seconds": first_call, "call_seconds": seconds} if system.startswith("served") else {})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=os.path.join("runs", "serving_bench"), help="exports are kept here")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ", ".join(SYSTEMS))
    parser.add_argument("--smoke", action="store_true", help="gpt2-tiny, batches 1 and 2, 4 + 4 tokens")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    refuse_earlier_results(parser, args.json)
    preset = "gpt2-tiny" if args.smoke else "gpt2"
    if args.smoke:
        args.batches, args.prompt, args.new, args.repeats = [1, 2], 4, 4, 1
    systems = args.systems.split(",")
    if set(systems) - set(SYSTEMS):
        parser.error(f"unknown systems {sorted(set(systems) - set(SYSTEMS))}")
    work = os.path.join(args.work, preset)
    in_own_process(f"m.prepare({work!r}, {preset!r}, {args.new})", "serving_throughput")
    start_load, started = conditions()
    print(f"{started}; {preset}, prompt {args.prompt}, {args.new} new, greedy; new tokens/s", flush=True)
    results = {system: {} for system in systems}
    for batch in args.batches:
        for system in systems:
            results[system][batch] = in_own_process(
                f"print(json.dumps(m.measure({system!r}, {work!r}, {batch}, {args.prompt}, {args.new}, "
                f"{args.repeats})))", "serving_throughput")
            short = batch * args.new - results[system][batch]["new_tokens"]  # rows that stopped at <|endoftext|>
            print(f"batch {batch:3d}  {SYSTEMS[system]}: {results[system][batch]['tokens_per_second']:,.1f}"
                  + (f" ({short} tokens fewer: rows stopped early)" if short else ""), flush=True)
    print("\n| system | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    print("|---|" + "---:|" * len(args.batches))
    for system in systems:
        print(f"| {SYSTEMS[system]} | " + " | ".join(
            f"{results[system][b]['tokens_per_second']:,.0f}" for b in args.batches) + " |")
    if args.json:
        write_results(args.json, {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "preset": preset,
                                  "threads": os.cpu_count(), "load_average_at_start": start_load, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
