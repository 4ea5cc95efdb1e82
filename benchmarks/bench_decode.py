"""Decode throughput: GPT-2 124M (random weights), batch 1, 32-token prompt, 128 new tokens, greedy.

Runs every system in this one process, so the ratios are comparable on a noisy machine:
    python benchmarks/bench_decode.py [--new-tokens 128] [--skip-litert]
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (quiet TensorFlow before it loads)
import numpy as np

from tf_gpt2 import GPT2, GPT2Config


def ours(cfg, prompt, new):
    model = GPT2(cfg)
    return lambda: model.generate(prompt, max_new_tokens=new, stop_ids=[]), model


def keras_hub(cfg, prompt, new):
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=cfg.vocab_size, num_layers=cfg.n_layer, num_heads=cfg.n_head, hidden_dim=cfg.n_embd,
        intermediate_dim=4 * cfg.n_embd, max_sequence_length=cfg.n_positions, dropout=0.0,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    lm.jit_compile = True  # "auto" turns XLA off on CPU
    length = len(prompt) + new
    ids = np.zeros((1, length), np.int32)
    ids[0, : len(prompt)] = prompt
    mask = np.zeros((1, length), bool)
    mask[0, : len(prompt)] = True
    return lambda: lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)


def hf_torch(cfg, prompt, new):
    import torch
    import transformers

    torch.set_num_threads(2)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head)).eval()
    ids = torch.tensor([prompt])

    def run():
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=0)
    return run


def litert(model, prompt, new, quantize):
    from tf_gpt2.export import LiteRTGenerator, litert_bytes

    gen = LiteRTGenerator(litert_bytes(model, max_length=len(prompt) + new, quantize=quantize))
    return lambda: gen.generate(prompt, max_new_tokens=new), gen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--skip-litert", action="store_true")
    args = parser.parse_args()
    cfg = GPT2Config.from_preset("gpt2")
    prompt = np.random.RandomState(0).randint(0, cfg.vocab_size, args.prompt_tokens).tolist()
    new = args.new_tokens

    rows = {}
    run_ours, model = ours(cfg, prompt, new)
    rows["tf_gpt2 (TF, XLA while-loop, KV cache)"] = new / common.best_seconds(run_ours)
    rows["keras-hub GPT2CausalLM (TF, XLA)"] = new / common.best_seconds(keras_hub(cfg, prompt, new))
    rows["Hugging Face transformers (torch)"] = new / common.best_seconds(hf_torch(cfg, prompt, new))
    if not args.skip_litert:
        reference = run_ours()
        for quantize in ("fp32", "int8"):
            run, gen = litert(model, prompt, new, quantize)
            rows[f"tf_gpt2 LiteRT {quantize} (interpreter)"] = new / common.best_seconds(run, repeats=2)
            agreement = np.mean(np.array(run()) == np.array(reference))
            print(f"LiteRT {quantize}: greedy tokens equal to the Keras model's: {agreement:.0%}")
    common.print_table(f"Decode tokens/s, GPT-2 124M, batch 1, prompt {len(prompt)}, {new} new, greedy",
                       rows, "tokens/s", "Hugging Face transformers (torch)")


if __name__ == "__main__":
    main()
