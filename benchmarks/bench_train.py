"""Training throughput: tf_gpt2 vs keras-hub GPT2 (TF, XLA) vs Hugging Face GPT-2 in torch.

Same model (6 layers, 6 heads, 384 wide, vocab 50304, context 256), batch 8, AdamW, one process:
    python benchmarks/bench_train.py [--steps 20] [--no-torch-compile]
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (quiet TensorFlow before it loads)
import keras
import numpy as np

from tf_gpt2 import GPT2, GPT2Config

L, H, D, T, B, V = 6, 6, 384, 256, 8, 50304


def batches(n):
    rng = np.random.default_rng(0)
    return [rng.integers(0, V, (B, T + 1)).astype(np.int32) for _ in range(n)]


def keras_tokens_per_second(model, data, steps, x_of):
    model.compile(optimizer=keras.optimizers.AdamW(3e-4), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    step = lambda b: model.train_on_batch(x_of(b[:, :-1]), b[:, 1:])  # noqa: E731
    for b in data[:3]:  # compile + warm up
        step(b)
    start = time.perf_counter()
    for b in data[3:3 + steps]:
        step(b)
    return steps * B * T / (time.perf_counter() - start)


def ours(data, steps):
    model = GPT2(GPT2Config(vocab_size=V, n_positions=T, n_embd=D, n_layer=L, n_head=H))
    return keras_tokens_per_second(model, data, steps, lambda x: x)


def keras_hub_gpt2(data, steps):
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=V, num_layers=L, num_heads=H, hidden_dim=D,
                                             intermediate_dim=4 * D, max_sequence_length=T, dropout=0.0)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    return keras_tokens_per_second(lm, data, steps, lambda x: {"token_ids": x, "padding_mask": np.ones_like(x)})


def hf_torch(data, steps, compile_model):
    import torch
    import transformers

    torch.set_num_threads(2)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=T, n_embd=D, n_layer=L, n_head=H, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    forward = torch.compile(model) if compile_model else model

    def step(b):
        b = torch.from_numpy(b).long()
        loss = forward(input_ids=b[:, :-1], labels=b[:, :-1]).loss  # HF shifts labels itself
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for b in data[:3]:
        step(b)
    start = time.perf_counter()
    for b in data[3:3 + steps]:
        step(b)
    return steps * B * T / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-torch-compile", action="store_true")
    args = parser.parse_args()
    data = batches(args.steps + 3)
    rows = {
        "tf_gpt2 (TF, XLA)": ours(data, args.steps),
        "keras-hub GPT2CausalLM (TF, XLA)": keras_hub_gpt2(data, args.steps),
        "Hugging Face GPT-2 (torch eager)": hf_torch(data, args.steps, False),
    }
    if not args.no_torch_compile:
        rows["Hugging Face GPT-2 (torch.compile)"] = hf_torch(data, args.steps, True)
    params = GPT2Config(vocab_size=V, n_positions=T, n_embd=D, n_layer=L, n_head=H).num_params()
    flops_per_token = 6 * params + 12 * L * D * T  # matmuls fwd+bwd, plus attention
    print(f"model: {params / 1e6:.1f}M parameters, ~{flops_per_token / 1e9:.2f} GFLOP per token")
    for name, tps in rows.items():
        print(f"{name}: {tps * flops_per_token / 1e9:.0f} GFLOP/s achieved")
    common.print_table(f"Training tokens/s, L{L}/H{H}/D{D}/T{T}/B{B}/V{V}, AdamW", rows, "tokens/s",
                       "Hugging Face GPT-2 (torch eager)")


if __name__ == "__main__":
    main()
