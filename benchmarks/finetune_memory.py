"""Peak memory and step time of one fine-tuning step, T=1024, batch 1: tf_gpt2 on TensorFlow and on JAX, full and
LoRA (rank 8), with and without recomputation (`remat`), next to transformers' GPT2LMHeadModel with and without
`gradient_checkpointing_enable()`. Each configuration runs in its own process; memory is that process's peak RSS
(CPU: weights, gradients, optimizer state and activations all live there). Random weights of the preset's shape.

    python benchmarks/finetune_memory.py --presets gpt2 gpt2-medium --json memory.json
    python benchmarks/finetune_memory.py --smoke                      # tiny shapes: checks the harness

A step is `model.fit` on one [1, T] batch with AdamW (torch: loss.backward + AdamW.step), bfloat16 mixed precision
where the path has it (`mixed_bfloat16`; torch: CPU autocast to bfloat16). Step time: the best of `--repeats` steps
after a first one (which compiles). transformers' LoRA rows use peft (`pip install peft`); a configuration that
fails (no peft, out of memory) is reported as such and the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

from harness import best_seconds

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEMS = {"tf": "tf_gpt2, TensorFlow (XLA)", "jax": "tf_gpt2, JAX (XLA)", "hf": "HF transformers (torch)"}


def step(system: str, preset: str, mode: str, remat: bool, time_steps: int, repeats: int, base_dtype: str | None,
         ) -> dict:
    """Run one configuration in this process; its peak RSS and best step time."""
    if system == "hf":
        return _torch_step(preset, mode, remat, time_steps, repeats)
    os.environ["KERAS_BACKEND"] = "tensorflow" if system == "tf" else "jax"
    import keras
    import numpy as np

    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.training import enable_lora

    config = GPT2Config.from_preset(preset, remat=remat)
    model = GPT2(config, dtype=base_dtype or "mixed_bfloat16")
    if mode == "lora":
        enable_lora(model, 8)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (1, time_steps + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    seconds = best_seconds(lambda: model.fit(x, y, batch_size=1, epochs=1, verbose=0), repeats)
    return {"peak_rss_bytes": _peak_rss(), "step_seconds": seconds}


def _torch_step(preset: str, mode: str, remat: bool, time_steps: int, repeats: int) -> dict:
    import torch
    import transformers

    from tf_gpt2 import GPT2Config

    ours = GPT2Config.from_preset(preset)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=ours.vocab_size, n_positions=ours.n_positions, n_embd=ours.n_embd, n_layer=ours.n_layer,
        n_head=ours.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    if remat:
        model.gradient_checkpointing_enable()
    if mode == "lora":
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=["c_attn", "c_proj", "c_fc"],
                                                           fan_in_fan_out=True))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, ours.vocab_size, (1, time_steps), generator=torch.Generator().manual_seed(0))

    def one_step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = best_seconds(one_step, repeats)
    return {"peak_rss_bytes": _peak_rss(), "step_seconds": seconds}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _in_own_process(call: str) -> dict:
    code = f"import sys, json; sys.path.insert(0, {HERE!r}); import finetune_memory as m; {call}"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["gpt2", "gpt2-medium"])
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ", ".join(SYSTEMS))
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument("--time", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--base-dtype", help="tf_gpt2 LoRA: the frozen base in this dtype (bfloat16)")
    parser.add_argument("--smoke", action="store_true", help="gpt2-tiny, T=32, one repeat")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.presets, args.time, args.repeats = ["gpt2-tiny"], 32, 1
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; T={args.time}, batch 1; peak RSS and best step time", flush=True)
    rows = []
    for preset in args.presets:
        for mode in args.modes.split(","):
            for system in args.systems.split(","):
                for remat in (False, True):
                    base = args.base_dtype if mode == "lora" and system != "hf" else None
                    result = _in_own_process(
                        f"print(json.dumps(m.step({system!r}, {preset!r}, {mode!r}, {remat}, {args.time}, "
                        f"{args.repeats}, {base!r})))")
                    rows.append({"preset": preset, "mode": mode, "system": system, "remat": remat,
                                 "base_dtype": base, **result})
                    shown = (f"{result['peak_rss_bytes'] / 2**30:.2f} GiB, {result['step_seconds']:.2f} s/step"
                             if "error" not in result else f"failed: {result['error']}")
                    print(f"{preset:12s} {mode:4s} {SYSTEMS[system]:28s} remat {'on ' if remat else 'off'}: {shown}",
                          flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "time": args.time, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
