"""On-device speed: our `.litertlm` in LiteRT-LM (its own benchmark) next to CTranslate2 int8, HF torch and our
XLA decode loop, on the same GPT-2 weights, each system in its own process, one after the other.

    python benchmarks/on_device.py --json on_device.json          # GPT-2 124M (random weights), ~15 minutes
    python benchmarks/on_device.py --smoke                        # tiny shapes: checks the harness

Each worker prints one JSON line: prefill and decode tokens/s (best of --repeats), peak resident memory. LiteRT-LM
reports its own prefill/decode rates; for the others, prefill = P / t(P prompt + 1 new) and decode =
(N - 1) / (t(P + N) - t(P + 1)), so both count the same work. Exports are written once into --work and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from harness import (  # noqa: E402  (the peers' processes hold no TensorFlow)
    HERE,
    ROOT,
    conditions,
    machine,
    peak_rss_bytes,
    refuse_earlier_results,
    tensorflow_free,
    write_results,
)

QUANTIZATIONS = tensorflow_free("formats").QUANTIZATIONS

SMOKE = dict(preset="gpt2-tiny", prompt=8, new=16, caches=[64])
FULL = dict(preset="gpt2", prompt=64, new=128, caches=[256, 1024])


def _prompt(n: int) -> list[int]:
    import numpy as np

    return np.random.RandomState(0).randint(0, 50000, n).tolist()


def _peak_mb() -> float:
    return peak_rss_bytes() / 2**20


def _rates(generate, prompt: int, new: int, repeats: int) -> dict:
    """generate(n) produces n tokens after the prompt; prefill and decode rates from two lengths."""
    from harness import best_seconds  # one warm-up call, then the best of `repeats`

    for _ in range(3):  # (a spike in the one-token run can outlast a tiny model's whole decode: timed again)
        one, many = best_seconds(lambda: generate(1), repeats), best_seconds(lambda: generate(new), repeats)
        if many > one:
            return {"prefill_tok_s": prompt / one, "decode_tok_s": (new - 1) / (many - one)}
    # (a clamped difference gave a rate of millions of tokens/s)
    raise RuntimeError(f"{new} new tokens took no longer than 1 ({many:.4f} s against {one:.4f} s) in three timings: "
                       "no decode rate can be read (a generate that makes fewer tokens, or a machine too busy)")


# -- workers: each runs in its own process -------------------------------------------------------
def prepare(work: str, preset: str, caches: list[int], quantizations: list[str], ct2: bool = True) -> None:
    """Random GPT-2 weights (seed 0) as an HF dir, with `ct2` a CTranslate2 int8 dir, and one .litertlm per
    quantization x cache."""
    import keras

    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.litert import export_litertlm
    from tf_gpt2.tokenizer import default_vocab_files

    hf_dir = os.path.join(work, "hf")
    keras.utils.set_random_seed(0)
    model = GPT2(GPT2Config.from_preset(preset))
    if not os.path.exists(os.path.join(hf_dir, "model.safetensors")):
        model.save_pretrained(hf_dir)
        encoder_json, vocab_bpe = default_vocab_files()  # the converter loads the tokenizer too
        shutil.copy(encoder_json, os.path.join(hf_dir, "vocab.json"))
        shutil.copy(vocab_bpe, os.path.join(hf_dir, "merges.txt"))
    else:
        model = GPT2.from_pretrained(hf_dir)
    for cache in caches:
        for quantize in quantizations:
            path = os.path.join(work, f"gpt2-{quantize}-{cache}.litertlm")
            if not os.path.exists(path):
                started = time.perf_counter()
                export_litertlm(model, path, cache_length=cache, quantize=quantize)
                print(f"exported {path} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    ct2_dir = os.path.join(work, "ct2-int8")
    if ct2 and not os.path.exists(ct2_dir):
        import ctranslate2

        ctranslate2.converters.TransformersConverter(hf_dir).convert(ct2_dir, quantization="int8")


def worker_litert_lm(path: str, prompt: int, new: int, threads: int, repeats: int) -> dict:
    import litert_lm

    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * (prompt // 4 + 1))  # >= prompt tokens
    runs = [litert_lm.Benchmark(path, backend=litert_lm.Backend.CPU(thread_count=threads), prefill_tokens=prompt,
                                decode_tokens=new, prompt=text).run() for _ in range(repeats + 1)]
    return {"prefill_tok_s": max(r.last_prefill_tokens_per_second for r in runs),
            "decode_tok_s": max(r.last_decode_tokens_per_second for r in runs),
            "file_mb": os.path.getsize(path) / 1e6}


def worker_ct2(path: str, prompt: int, new: int, threads: int, repeats: int) -> dict:
    import ctranslate2

    with open(os.path.join(os.path.dirname(path), "hf", "vocab.json"), encoding="utf-8") as f:  # from prepare
        pieces = {i: piece for piece, i in json.load(f).items()}
    start = [[pieces[i] for i in _prompt(prompt)]]
    generator = ctranslate2.Generator(path, device="cpu", inter_threads=1, intra_threads=threads)

    def generate(n):
        generator.generate_batch(start, max_length=n, min_length=n, sampling_topk=1, include_prompt_in_result=False)
    return {**_rates(generate, prompt, new, repeats), "file_mb": _dir_mb(path)}


def worker_hf(path: str, prompt: int, new: int, threads: int, repeats: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    ids = torch.tensor([_prompt(prompt)])

    def generate(n):
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
    return _rates(generate, prompt, new, repeats)


def _tensorflow_threads(threads: int) -> None:
    """TensorFlow's (and its XLA's) thread pools at `threads`, as the other systems are set (before TF starts)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def worker_tf_gpt2(path: str, prompt: int, new: int, threads: int, repeats: int, quantize: str | None = None) -> dict:
    _tensorflow_threads(threads)
    from tf_gpt2 import GPT2

    model, ids = GPT2.from_pretrained(path), _prompt(prompt)
    if quantize:
        model.quantize(quantize)
    return _rates(lambda n: model.generate(ids, max_new_tokens=n, stop_ids=[]), prompt, new, repeats)


def worker_tf_gpt2_int8(path: str, prompt: int, new: int, threads: int, repeats: int) -> dict:
    return worker_tf_gpt2(path, prompt, new, threads, repeats, quantize="int8")


def worker_keras_hub(path: str, prompt: int, new: int, threads: int, repeats: int) -> dict:
    import numpy as np
    from harness import _keras_hub_lm

    _tensorflow_threads(threads)
    from tf_gpt2 import GPT2

    lm = _keras_hub_lm(GPT2.from_pretrained(path).config)  # same shapes; its own random weights
    lm.compile(sampler="greedy")
    lm.jit_compile = True  # "auto" turns XLA off on CPU

    def generate(n):
        ids, mask = np.zeros((1, prompt + n), np.int32), np.zeros((1, prompt + n), bool)
        ids[0, :prompt], mask[0, :prompt] = _prompt(prompt), True
        lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
    return _rates(generate, prompt, new, repeats)


WORKERS = {"litert-lm": worker_litert_lm, "ct2": worker_ct2, "hf": worker_hf, "tf_gpt2": worker_tf_gpt2,
           "tf_gpt2-int8": worker_tf_gpt2_int8, "keras-hub": worker_keras_hub}


def _dir_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 1e6


# -- the harness ---------------------------------------------------------------------------------
def _run_worker(kind: str, path: str, args: argparse.Namespace, shape: dict) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--path", path, "--prompt", str(shape["prompt"]),
               "--new", str(shape["new"]), "--threads", str(args.threads), "--repeats", str(args.repeats)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    ct2 = next((r for r in rows if r["system"].startswith("CTranslate2")), None)
    hf = next((r for r in rows if r["system"].startswith("HF")), None)
    lines = ["| system | cache | file MB | peak RSS MiB | prefill tok/s | decode tok/s | decode vs CT2 int8 "
             "| vs HF torch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = lambda base: f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}x" if base else "-"  # noqa: E731
        file_mb = f"{r['file_mb']:.0f}" if "file_mb" in r else "-"
        lines.append(f"| {r['system']} | {r.get('cache', '-')} | {file_mb} | {r['peak_mb']:.0f} | "
                     f"{r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | {ratio(ct2)} | {ratio(hf)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join("saved_models", "bench_on_device"), help="exports go here")
    parser.add_argument("--smoke", action="store_true", help="gpt2-tiny, short prompt: checks the harness")
    parser.add_argument("--quantize", nargs="+", default=list(QUANTIZATIONS), choices=QUANTIZATIONS)
    parser.add_argument("--caches", nargs="+", type=int, help="cache lengths (default 256 1024; smoke: 64)")
    parser.add_argument("--systems", nargs="+", default=["litert-lm", "ct2", "hf", "tf_gpt2"], choices=list(WORKERS))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every system")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--prompt", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--new", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](args.path, args.prompt, args.new, args.threads, args.repeats)
        print(json.dumps({**result, "peak_mb": _peak_mb()}))
        return 0
    refuse_earlier_results(parser, args.json)
    shape = dict(SMOKE if args.smoke else FULL)
    caches = args.caches or shape["caches"]
    os.makedirs(args.work, exist_ok=True)
    start_load, started = conditions()
    print(f"{started}; {shape['preset']}, prompt {shape['prompt']}, {shape['new']} new tokens, greedy, batch 1, "
          f"{args.threads} threads each", flush=True)
    subprocess.run([sys.executable, "-c", f"import sys; sys.path[0:0] = [{HERE!r}, {ROOT!r}]; "
                    f"import on_device; on_device.prepare({args.work!r}, {shape['preset']!r}, {caches!r}, "
                    f"{args.quantize if 'litert-lm' in args.systems else []!r}, {'ct2' in args.systems})"],
                   check=True)  # (only what the systems run)
    jobs = []
    if "litert-lm" in args.systems:
        jobs += [(f"LiteRT-LM {q}", "litert-lm", os.path.join(args.work, f"gpt2-{q}-{c}.litertlm"), c)
                 for c in caches for q in args.quantize]
    labels = {"ct2": ("CTranslate2 int8", "ct2-int8"), "hf": ("HF torch (KV cache)", "hf"),
              "tf_gpt2": ("tf_gpt2 XLA (Keras, TF)", "hf"), "tf_gpt2-int8": ("tf_gpt2 XLA, Keras int8", "hf"),
              "keras-hub": ("keras-hub GPT2CausalLM (TF, XLA)", "hf")}
    jobs += [(label, kind, os.path.join(args.work, sub), None) for kind, (label, sub) in labels.items()
             if kind in args.systems]
    rows = []
    for label, kind, path, cache in jobs:
        row = {"system": label, **({"cache": cache} if cache else {}), **_run_worker(kind, path, args, shape)}
        print(f"{label}{f' (cache {cache})' if cache else ''}: prefill {row['prefill_tok_s']:.1f} tok/s, "
              f"decode {row['decode_tok_s']:.1f} tok/s, peak {row['peak_mb']:.0f} MiB", flush=True)
        rows.append(row)
    print(table(rows))
    if args.json:
        write_results(args.json, {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "threads": args.threads,
                                  "load_average_at_start": start_load, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
