"""Convergence check: the same tiny GPT-2 trained by tf_gpt2 (`model.fit`) and by a torch reference
(Hugging Face GPT2LMHeadModel, plain AdamW loop) on the same batches of character-level
Shakespeare, with the same schedule, decay rule and clipping. Prints both validation losses (and, with --json,
writes them with the date and the CPU).
    python benchmarks/convergence.py [--steps 500] [--json benchmarks/results/convergence-DATE.json]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import machine, refuse_earlier_results, write_results  # noqa: E402  (it puts this checkout's tf_gpt2 first)

from tf_gpt2.data import TokenShards, embedded_corpus, prepare  # noqa: E402
from tf_gpt2.training import TrainConfig, train  # noqa: E402

SIZE = dict(n_layer=4, n_head=4, n_embd=128, n_positions=128)
B, T, LR, MIN_LR, WARMUP = 16, 128, 1e-3, 1e-4, 50


def lr_at(step: int, steps: int) -> float:
    """The learning rate of update `step` of `steps`, as tf_gpt2's `learning_rate_schedule` gives it: update i of
    the warmup at (i + 1) / (warmup + 1) of the peak (a run of few steps warms up less), then cosine decay."""
    warmup = min(WARMUP, steps - 1)
    if step < warmup:
        return LR * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(steps - warmup, 1)
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * progress))


def val_batches(shards, n=20):
    return [shards.batch(step, T, B, seed=12345) for step in range(n)]


def torch_reference(train_shards, val, steps, vocab):
    import torch
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_positions=SIZE["n_positions"], n_embd=SIZE["n_embd"], n_layer=SIZE["n_layer"],
        n_head=SIZE["n_head"], resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
        bos_token_id=None, eos_token_id=None))  # (GPT-2's 50256 is no character id)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=LR, betas=(0.9, 0.95), eps=1e-7)

    loss_fn = torch.nn.CrossEntropyLoss()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps)
        x, y = (torch.from_numpy(a).long() for a in train_shards.batch(step, T, B, seed=0))
        loss = loss_fn(model(input_ids=x).logits.reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        losses = [loss_fn(model(input_ids=torch.from_numpy(x).long()).logits.reshape(-1, vocab),
                          torch.from_numpy(y).long().reshape(-1)).item() for x, y in val]
    return float(np.mean(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--json", help="also write the losses, date and CPU to this file")
    args = parser.parse_args()
    refuse_earlier_results(parser, args.json)
    with tempfile.TemporaryDirectory() as tmp:
        prepare(embedded_corpus(), f"{tmp}/data", vocab="char", verbose=False)
        train_shards, val_shards = TokenShards(f"{tmp}/data", "train"), TokenShards(f"{tmp}/data", "val")
        val = val_batches(val_shards)
        cfg = TrainConfig(out=f"{tmp}/run", data=f"{tmp}/data", preset="gpt2-tiny", model=SIZE, steps=args.steps,
                          eval_interval=args.steps, batch_size=B, block_size=T, learning_rate=LR,
                          min_learning_rate=MIN_LR, warmup_steps=WARMUP, eval_batches=1, sample_tokens=0,
                          tensorboard=False, verbose=0)
        model, _ = train(cfg)
        ours = float(np.mean([model.evaluate(x, y, verbose=0) for x, y in val]))
        reference = torch_reference(train_shards, val, args.steps, train_shards.vocab_size)
    tokens = args.steps * B * T
    print(f"\nValidation loss after {args.steps} steps ({tokens:,} tokens), char-level Shakespeare, "
          f"L{SIZE['n_layer']}/H{SIZE['n_head']}/D{SIZE['n_embd']}/T{T}/B{B}:")
    print(f"  tf_gpt2 (model.fit)             {ours:.4f}")
    print(f"  torch reference (HF GPT-2 loop) {reference:.4f}")
    print(f"  uniform guess                   {math.log(train_shards.vocab_size):.4f}")
    if args.json:
        record = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "steps": args.steps, "tokens": tokens,
                  "shape": {**SIZE, "block_size": T, "batch_size": B}, "tf_gpt2": ours, "torch_reference": reference,
                  "uniform_guess": math.log(train_shards.vocab_size)}
        write_results(args.json, record)


if __name__ == "__main__":
    main()
