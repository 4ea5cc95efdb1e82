"""GPT-2 124M training step on one GPU: tf_gpt2 on Keras' JAX backend (XLA, bf16) next to Hugging Face GPT-2
under torch.compile (bf16 autocast), same shapes, same process. Reports tokens/s and MFU against the GPU's
dense bf16 peak, and checks the GPU forward pass against the CPU one.

    KERAS_BACKEND=jax python benchmarks/gpu_train_jax.py [--batch-size 16] [--steps 20] [--out results.json]

On a machine with JAX/torch but no Keras, bring the wheels (pip download --no-deps ... keras namex optree
tiktoken regex rich markdown-it-py mdurl pygments h5py ml-dtypes absl-py) and put them on PYTHONPATH first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core FLOP/s (SXM)


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU (None elsewhere: then no MFU is reported)."""
    return next((flops for name, flops in PEAK_BF16.items() if name in device_name), None)


def keras_jax_step(setup):
    """One compiled Keras train step (harness._keras_step) of a mixed_bfloat16 model."""
    from harness import _keras_step, _ours

    return _keras_step(_ours(setup.config, dtype="mixed_bfloat16"), lambda x: x)


def torch_compile_step(setup):
    """One HF GPT-2 train step on the GPU under torch.compile and bf16 autocast; blocks until it is done."""
    import torch
    from harness import _hf_model

    model = _hf_model(setup.config).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=True)
    forward = torch.compile(lambda x: model(input_ids=x).logits)

    def step(batch):
        batch = torch.from_numpy(batch).long().cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = forward(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
    return step


def gpu_matches_cpu(setup) -> float:
    """max |logits(GPU) - logits(CPU)| in float32 for the same weights and ids."""
    import jax
    from harness import _ours

    model = _ours(setup.config)
    ids = np.random.default_rng(1).integers(0, setup.vocab_size, (2, 128)).astype(np.int32)
    on_device = np.asarray(model(ids))
    cpu = jax.devices("cpu")[0]
    to_cpu = lambda variables: [jax.device_put(np.asarray(v.value), cpu) for v in variables]  # noqa: E731
    with jax.default_device(cpu):
        on_cpu, _ = model.stateless_call(to_cpu(model.trainable_variables), to_cpu(model.non_trainable_variables),
                                         jax.device_put(ids, cpu))
    return float(np.abs(on_device - np.asarray(on_cpu)).max())


def main() -> None:
    import jax
    from harness import TrainSetup, train_tokens_per_second

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--out", help="write the figures to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, to check the script on a CPU")
    args = parser.parse_args()

    size = dict(n_layer=2, n_head=2, n_embd=64, block_size=128) if args.smoke else \
        dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)
    setup = TrainSetup(**size, batch_size=args.batch_size, vocab_size=50304, steps=args.steps)
    device = jax.devices()[0].device_kind
    peak = peak_flops(device)
    results = {"device": device, "date": time.strftime("%Y-%m-%d"), "shape": setup.describe(),
               "flops_per_token": setup.flops_per_token, "peak_bf16_flops": peak,
               "gpu_vs_cpu_max_abs_logit_diff_fp32": gpu_matches_cpu(setup)}
    systems = {"tf_gpt2 (Keras 3, JAX backend, XLA, bf16)": keras_jax_step}
    if not args.skip_torch:
        systems["HF transformers GPT-2 (torch.compile, bf16 autocast)"] = torch_compile_step
    for name, make_step in systems.items():
        tokens_per_second = train_tokens_per_second(make_step(setup), setup)
        mfu = tokens_per_second * setup.flops_per_token / peak if peak else None
        results[name] = {"tokens_per_s": tokens_per_second, "mfu": mfu}
        print(f"{name}: {tokens_per_second:,.0f} tokens/s" + (f", MFU {mfu:.1%}" if mfu else ""), flush=True)
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
