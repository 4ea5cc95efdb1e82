"""tf_gpt2 on one GPU next to its peers, in one command: parity with Hugging Face, training tokens/s and MFU,
fine-tuning memory (device peak), and decode tokens/s. Every system runs in its own process.

    python benchmarks/gpu.py --out gpu-results      # a CUDA machine with JAX and torch (not yet timed whole*)
    python benchmarks/gpu.py --smoke --out /tmp/g  # tiny shapes on a CPU: checks the harness (the test suite runs it)

Needs JAX with CUDA, torch with CUDA, transformers and peft; not TensorFlow (tf_gpt2 runs on Keras' JAX backend).
Where Keras is missing, bring its wheels and put them on PYTHONPATH first, e.g.
`pip download --no-deps keras namex optree` then `pip install --no-deps --target /tmp/site *.whl`.

- Parity: GPT-2 124M random weights saved as a Hugging Face directory, loaded by `GPT2.from_pretrained`; float32 logits
  next to transformers on the same GPU (JAX matmuls at "highest" precision, torch TF32 off), and 32 greedy tokens.
- Training: GPT-2 124M shape (vocab 50304), T=1024, AdamW, bf16: tf_gpt2 (`mixed_bfloat16`, `model.fit` with the
  callbacks `tf-gpt2 train` runs each step), a nanoGPT-style model and HF GPT2LMHeadModel under torch.compile with bf16
  autocast (the model and its loss in one compiled function, fused AdamW); batch 16 and 32 without dropout, batch 16
  with GPT-2's dropout 0.1; with `--levers`, tf_gpt2 with one setting changed (`LEVERS`). MFU against the GPU's
  dense bf16 peak. `--profile` adds tf_gpt2's GPU time per step, kernel by kernel and layer by layer (from the op
  names in XLA's optimized program).
- Memory: one fine-tuning step (T=1024, batch 1, AdamW) per preset: full, full with recomputation, LoRA rank 8 on a
  bfloat16 base with recomputation; transformers full, with gradient checkpointing, and peft LoRA on a bf16 base,
  each stepping torch's fused AdamW (transformers' Trainer's default with torch >= 2.8).
  Device peak: JAX `memory_stats()["peak_bytes_in_use"]`, torch `max_memory_allocated()`; neither counts the CUDA
  context (about 1 GB more on the card).
- Decode: greedy, 32-token prompts, 128 new tokens, batch 1 and 8: `model.generate` in float32 and bfloat16; HF
  `generate` eager, and with its static cache (which transformers compiles with torch.compile on a GPU).
Speed processes (training, decode) compile side by side in waves, then are timed one at a time on a quiet GPU.
Parity and memory processes share the GPU, several at a time, while the speed processes compile; they are stopped
(SIGSTOP) while one is timed, and end with gpu.py however it ends. Each process's seconds (to compiled, to its
end, stopped) go into results.json.
Writes results.json and results.md into --out after each row, and ratios.png (matplotlib) at the end, or when a
SIGTERM (`timeout`) ends the run. `--budget` (480 s) ends it in time: the speed rows the docs quote run first and
the levers last, a wave of speed runs starts only if one as long as the longest so far would end by then, and the
speed runs of a wave still compiling or waiting their turn then, and the memory and parity runs still going, are
ended (their rows say "not run").
* On 2026-12-04 an H200 ran its parts in separate calls: 454 s for 13 training rows with the levers, decode and
parity (benchmarks/results/gpu-h200-2026-12-04-fit-2.json); the call that measured memory recorded no time. The
memory processes now run beside the compiles, and the levers only with `--levers`: the goal, a whole run in 6
minutes, is not yet measured.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[1:1] = [os.path.dirname(HERE)]  # the checkout's tf_gpt2, installed or not
from harness import TrainSetup, _hf_model, tensorflow_free, versions, write_results, write_whole  # noqa: E402

GB = 1e9
TIMED = ("train", "decode")  # compiled side by side in waves, then timed one at a time; the rest share the GPU
# Dense bf16 FLOP/s, the first name the device's matches (an H100 or H200 in PCIe or NVL form runs slower than SXM)
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H200 NVL": 835e12, "H100": 989e12, "H200": 989e12,
             "A100": 312e12, "L4": 121e12}
KINDS = ("train", "decode", "parity", "memory")
PRESETS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
GPUS = {"T4 16 GB": 16, "L4 24 GB": 24, "A100 40 GB": 40, "H100 / A100 80 GB": 80}
CUDA_CONTEXT_GB = 1.0  # what the card holds beyond the framework's own peak
OUT_OF_MEMORY = re.compile(r"RESOURCE_EXHAUSTED|out of memory|OutOfMemory", re.IGNORECASE)
WIDE, SMOKE = dict(n_layer=12, n_head=12, n_embd=768), dict(n_layer=2, n_head=2, n_embd=64)


# -- one measurement, in a process of its own ---------------------------------------------------------------------

def _config(shape: dict, vocab_size: int, n_positions: int, **more):
    from tf_gpt2 import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=n_positions, **shape, **more)


def _device(smoke: bool) -> str:
    return "cpu" if smoke else "cuda"


def _adamw(parameters, device: str, **settings):
    """torch's AdamW, fused on a GPU: nanoGPT's, and transformers' Trainer's default with torch >= 2.8."""
    import torch

    return torch.optim.AdamW(parameters, fused=True if device == "cuda" else None, **settings)


def _wait_for_go(ready: dict) -> None:
    """Tell the orchestrator this process has compiled and warmed up; time only once it says go."""
    print("READY " + json.dumps(ready), flush=True)
    sys.stdin.readline()


def parity(job: dict) -> dict:
    import jax
    import numpy as np
    import torch

    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    from tf_gpt2 import GPT2

    device, cfg = _device(job["smoke"]), _config(job["shape"], 50257, 1024)
    torch.manual_seed(0)
    hf = _hf_model(cfg).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        ours = GPT2.from_pretrained(directory)
    hf = hf.to(device)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 128)).astype(np.int32)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids).long().to(device)).logits.float().cpu().numpy()
        prompt = torch.from_numpy(ids[:1, :32]).long().to(device)
        their_tokens = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32,
                                   min_new_tokens=32, do_sample=False, pad_token_id=0)[0, 32:].tolist()
    our_tokens = [int(t) for t in ours.generate(ids[0, :32].tolist(), max_new_tokens=32, stop_ids=[])]
    return {"max_abs_logit_diff": float(np.abs(np.asarray(ours(ids)) - theirs).max()),
            "greedy_tokens_equal": sum(a == b for a, b in zip(our_tokens, their_tokens)), "greedy_tokens": 32,
            "device": jax.devices()[0].device_kind}


def train(job: dict) -> dict:
    """Tokens/s of one system's training at one batch size and setting (and, with "profile", where the time goes)."""
    import numpy as np

    cfg = _config(job["shape"], 50304, job["block"], dropout=job["dropout"], **job.get("model", {}))
    steps, batch, block = job["steps"], job["batch"], job["block"]
    data = np.random.default_rng(0).integers(0, cfg.vocab_size, (steps + 3, batch, block + 1)).astype(np.int32)
    run = (_keras_train if job["system"] == "tf_gpt2" else _torch_train)(job, cfg)
    run(data[:3])  # compile and warm up
    _wait_for_go({})
    start = time.perf_counter()
    run(data[3:])
    result = {"tokens_per_s": steps * batch * block / (time.perf_counter() - start)}
    if job["system"] == "tf_gpt2":
        import jax

        result["device"] = jax.devices()[0].device_kind
    if job.get("profile"):
        try:
            result["kernels"] = kernel_profile(run, data[3:13], job.get("hlo_dir"))  # one fit's one-off work: /10
        except Exception as e:  # no profiler here: the speed still counts
            result["profile_error"] = f"{type(e).__name__}: {e}"[:300]
        shutil.rmtree(job.get("hlo_dir") or "", ignore_errors=True)
    return result


def _keras_train(job, cfg):
    """`model.fit` with the callbacks `tf-gpt2 train` runs at every step (its data comes from tf.data instead);
    the "loop" setting measures the alternatives: Keras' own callback list, or `train_on_batch` step by step."""
    import jax
    import keras

    from tf_gpt2 import GPT2
    from tf_gpt2.training import fit_callbacks, step_callbacks

    if job.get("attention"):
        from tf_gpt2.layers import CausalSelfAttention

        CausalSelfAttention._heads = _heads_apart  # (this process's only model)
    if job.get("logits"):
        GPT2._lm_head = _lm_head_in_compute_dtype
    model = GPT2(cfg, dtype="mixed_bfloat16")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # GPT2 computes it (token_cross_entropy)
    if job.get("loss"):  # a plain function: Keras computes it
        loss = lambda y, logits: keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)  # noqa
    model.compile(optimizer=keras.optimizers.AdamW(3e-4, weight_decay=0.1), jit_compile=True, loss=loss)
    loop = job.get("loop", "fit")

    def run(data):
        if loop == "train_on_batch":
            for batch in data:
                model.train_on_batch(batch[:, :-1], batch[:, 1:])
            return
        ids = data.reshape(-1, data.shape[-1])
        callbacks = step_callbacks(data.shape[1] * (data.shape[2] - 1))
        if loop == "fit":
            callbacks = fit_callbacks(callbacks, model, epochs=1, steps=len(data), verbose=0)
        model.fit(ids[:, :-1], ids[:, 1:], batch_size=data.shape[1], shuffle=False, verbose=0, callbacks=callbacks)
        jax.block_until_ready([v.value for v in model.trainable_variables])
    return run


def _heads_apart(self, x):
    """`CausalSelfAttention._heads` as three matmuls, each with its third of `c_attn`'s kernel and bias: q, k and v
    come straight out of their matmuls (and their gradients go into three), where the model slices them out of one
    [batch, time, 3·n_embd] output (and concatenates their gradients). A lever: the profile of 2026-12-04 gave the
    slices and the concatenation 2.6 ms of a 61.6 ms step (H200, batch 32)."""
    from keras import ops

    x = ops.cast(x, self.compute_dtype)
    kernel, bias = (ops.cast(w, self.compute_dtype) for w in (self.c_attn.kernel, self.c_attn.bias))
    shape = (ops.shape(x)[0], ops.shape(x)[1], self.n_head, self.head_dim)
    thirds = [slice(i * self.n_embd, (i + 1) * self.n_embd) for i in range(3)]
    return tuple(ops.reshape(ops.matmul(x, kernel[:, third]) + bias[third], shape) for third in thirds)


def _lm_head_in_compute_dtype(self, x):
    """`GPT2._lm_head` without its cast to float32: under mixed_bfloat16 the [batch, time, vocab] logits stay bfloat16
    in memory, half the bytes for the loss's reductions to read (the profile of 2026-12-04 gave them about 5 ms of a
    61.6 ms step), and the loss casts them to float32 as it reads them, as torch's autocast cross-entropy does."""
    logits = self.wte(x, reverse=True)
    return logits[..., : self.config.vocab_size]


def _torch_train(job, cfg):
    import torch

    device = _device(job["smoke"])
    if job["system"] == "nanogpt":
        sys.path.insert(0, HERE)
        from torch_nanogpt import NanoGPT

        model = NanoGPT(cfg).to(device).train()
        logits_of = model
    else:
        model = _hf_model(cfg).to(device).train()
        logits_of = lambda x: model(input_ids=x).logits  # noqa: E731
    optimizer = _adamw(model.parameters(), device, lr=3e-4, weight_decay=0.1)

    def loss_of(x, y):  # the loss compiled with the model, as nanoGPT's and HF's own training compile it
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = logits_of(x)
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    compiled_loss = torch.compile(loss_of, backend="eager" if job["smoke"] else "inductor")

    def run(data):
        for batch in data:
            batch = torch.from_numpy(batch).long()
            batch = batch.pin_memory().to(device, non_blocking=True) if device == "cuda" else batch
            loss = compiled_loss(batch[:, :-1], batch[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
    return run


KERNEL_KINDS = (("matmul", r"gemm|cutlass|xmma|nvjet|cublas|dot"), ("attention", r"cudnn|fmha|flash|sdpa"),
                ("copy", r"memcpy|memset"))


def kernel_profile(run, data, hlo_dir: str | None = None) -> dict:
    """Device time per training step by kernel, from a JAX profiler trace of `run(data)` (a CPU run: XLA's thunks);
    with `hlo_dir` (where XLA dumped the optimized train step), also by the layer each kernel computes for."""
    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            run(data)
        profile = ProfileData.from_file(glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)[0])
    planes = [p for p in profile.planes if p.name.startswith("/device:GPU")]
    lines = [line for plane in planes for line in plane.lines if line.name.startswith("Stream")]  # the kernels
    if not planes:  # a CPU: the threads that run XLA's compiled code
        lines = [line for p in profile.planes if p.name == "/host:CPU" for line in p.lines if "XLA" in line.name]
    kernels: dict[str, list] = {}
    names, scopes = (op_names(hlo_dir) if hlo_dir else {}), {}
    for line in lines:
        for event in line.events:
            ms = event.duration_ns / 1e6 / len(data)
            row = kernels.setdefault(event.name, [0.0, 0])
            row[0] += ms
            row[1] += 1
            op = names.get(kernel_name(dict(event.stats).get("hlo_op", event.name)))
            if op:
                where = scope(op)
                scopes[where] = scopes.get(where, 0.0) + ms
    kinds = {kind: 0.0 for kind, _ in KERNEL_KINDS} | {"other": 0.0}
    families: dict[str, float] = {}  # XLA's fusions by kind: "loop_convert_multiply_fusion_11" -> "loop_convert..."
    for name, (ms, _) in kernels.items():
        kind = next((kind for kind, pattern in KERNEL_KINDS if re.search(pattern, name, re.I)), "other")
        kinds[kind] += ms
        if kind == "other":
            family = re.sub(r"[._]?\d+$", "", name)[:60]
            families[family] = families.get(family, 0.0) + ms
    top = sorted(kernels.items(), key=lambda item: -item[1][0])[:40]
    return {"ms_per_step": sum(kinds.values()), "by_kind": kinds, "launches_per_step": sum(
        n for _, n in kernels.values()) / len(data), "lines": sorted({line.name for line in lines})[:12],
        "other_by_family": dict(sorted(families.items(), key=lambda item: -item[1])[:25]),
        "by_scope": dict(sorted(scopes.items(), key=lambda item: -item[1])[:30]),
        "top": [[name[:90], ms, count / len(data)] for name, (ms, count) in top]}


def op_names(directory: str) -> dict[str, str]:
    """Each instruction of the largest optimized program XLA dumped into `directory` (the train step): the name JAX
    gave the op it comes from, e.g. "jit(train_step)/transpose(jvp(h_3))/mlp/c_fc/dot_general"."""
    files = glob.glob(os.path.join(directory, "*after_optimizations.txt"))
    if not files:
        return {}
    with open(max(files, key=os.path.getsize)) as f:
        found = re.findall(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]+)"', f.read(), re.M)
    return {kernel_name(name): op for name, op in found}


def kernel_name(name: str) -> str:
    """An instruction's name as a GPU kernel is named after it: "loop_add_fusion.11" runs as "loop_add_fusion_11"."""
    return re.sub(r"[^\w]", "_", name)


def scope(op_name: str) -> str:
    """Where an op is, in the model's layers: "jit(train_step)/transpose(jvp(h_3))/mlp/c_fc/dot_general" is
    "h_*/mlp backward"; an optimizer's op is "adam_w"."""
    way = " backward" if "transpose(" in op_name else " forward" if "jvp(" in op_name else ""
    parts = [re.sub(r"^(?:[\w.]*\()+([^()]*)\)+$", r"\1", part) for part in op_name.split("/")
             if not part.startswith("jit(")]  # transpose(jvp(h_3)) -> h_3; jit(_var) is a helper's
    parts = [re.sub(r"^h_\d+$", "h_*", part) for part in parts if part]
    return ("/".join(parts[:-1][:2]) or "/".join(parts) or "?") + way


def memory(job: dict) -> dict:
    """Device peak of one fine-tuning step (two steps run: the peak of steady training)."""
    import numpy as np

    preset, mode, remat, block = job["preset"], job["mode"], job["remat"], job["block"]
    from tf_gpt2 import GPT2Config

    shape = {k: v for k, v in GPT2Config.from_preset(preset).to_dict().items() if k in ("n_layer", "n_head", "n_embd")}
    cfg = _config(job["shape"] or shape, 50257, 1024, remat=remat)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, block + 1)).astype(np.int32)
    if job["system"] == "tf_gpt2":
        import jax
        import keras

        from tf_gpt2 import GPT2
        from tf_gpt2.training import enable_lora

        model = GPT2(cfg, dtype="bfloat16" if mode == "lora" else "mixed_bfloat16")
        if mode == "lora":
            enable_lora(model, 8)
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=True,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for _ in range(2):
            jax.block_until_ready(model.train_on_batch(ids[:, :-1], ids[:, 1:]))
        stats = jax.devices()[0].memory_stats()  # None on a CPU
        return {"peak_bytes": stats["peak_bytes_in_use"] if stats else None}
    import torch

    device = _device(job["smoke"])
    model = _hf_model(cfg)
    if mode == "lora":
        import peft

        model = peft.get_peft_model(model.to(torch.bfloat16), peft.LoraConfig(
            r=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True))
    model = model.to(device).train()
    if remat:
        model.gradient_checkpointing_enable()
        if mode == "lora":
            model.enable_input_require_grads()
    optimizer = _adamw([p for p in model.parameters() if p.requires_grad], device, lr=1e-4)
    x = torch.from_numpy(ids[:, :-1]).long().to(device)
    for _ in range(2):
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss  # (transformers shifts the labels itself)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None}


def decode(job: dict) -> dict:
    """New tokens/s of greedy decoding at each batch size, best of two runs after a warm-up."""
    import numpy as np

    cfg = _config(job["shape"], 50257, 1024)
    rng = np.random.default_rng(0)
    prompts = {b: rng.integers(0, cfg.vocab_size, (b, job["prompt"])).astype(np.int32) for b in job["batches"]}
    new = job["new"]
    if job["system"] == "tf_gpt2":
        import jax

        from tf_gpt2 import GPT2

        if job["dtype"] == "float32":  # float32 matmuls, as torch's own (JAX's default allows TF32 on a GPU)
            jax.config.update("jax_default_matmul_precision", "highest")
        model = GPT2(cfg, dtype=job["dtype"])
        runs = {b: (lambda p=p: model.generate(p.tolist(), max_new_tokens=new, stop_ids=[])) for b, p in
                prompts.items()}
    else:
        import torch

        device = _device(job["smoke"])
        model = _hf_model(cfg).to(device).eval()
        extra = {"cache_implementation": "static"} if job["system"] == "hf-static" else {}

        def run(p):
            ids = torch.from_numpy(p).long().to(device)
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                     min_new_tokens=new, do_sample=False, pad_token_id=0, **extra)
            assert out.shape[1] == p.shape[1] + new
            if device == "cuda":
                torch.cuda.synchronize()
        runs = {b: (lambda p=p: run(p)) for b, p in prompts.items()}
    for fn in runs.values():
        fn()  # compile (the static cache's graphs too)
        fn()
    _wait_for_go({})
    result = {}
    for b, fn in runs.items():
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
        result[f"batch_{b}"] = b * new / min(seconds)
    return result


# -- the orchestrator --------------------------------------------------------------------------------------------

SMOKE_JOBS = (  # one of each path: what the test suite runs on a CPU
    "parity", "train tf_gpt2 b16 dropout 0.0 loss_chunk 256", "train tf_gpt2 b32 dropout 0.0 Keras callbacks",
    "train nanogpt b16 dropout 0.1", "train hf b16 dropout 0.0", "memory tf_gpt2 gpt2 lora remat",
    "memory hf gpt2 lora remat", "decode tf_gpt2 bfloat16", "decode hf-static float32")


LEVERS = (  # tf_gpt2's training, one setting changed: what each lever is worth
    (16, 0.1, {"model": {"attn_pdrop": 0.0}}),  # the fused attention kernel under residual/embedding dropout
    (16, 0.0, {"model": {"loss_chunk": 256}}), (32, 0.0, {"model": {"loss_chunk": 256}}),  # the chunked head
    (32, 0.0, {"loop": "Keras callbacks"}),  # each batch's loss read as soon as it is launched
    (32, 0.0, {"loop": "train_on_batch"}),  # a batch at a time, the weights synced after each
    (32, 0.0, {"loss": "Keras' cross-entropy"}),  # log-softmax's autodiff instead of GPT2's written-out gradient
    (32, 0.0, {"attention": "q, k, v apart"}),  # three matmuls instead of slices of one (`_heads_apart`)
    (32, 0.0, {"logits": "bfloat16 logits"}),  # the loss reads the head's bf16 output (`_lm_head_in_compute_dtype`)
    (32, 0.0, {"env": {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"}}),  # cuBLAS for every matmul
    (32, 0.0, {"env": {"XLA_FLAGS": "--xla_gpu_enable_cublaslt=true"}}),  # cuBLASLt: bias and GELU in the matmul
    (32, 0.0, {"env": {"XLA_FLAGS": "--xla_gpu_enable_cudnn_layer_norm=true"}}),  # cuDNN's LayerNorm, where it matches
    (64, 0.0, {}),
)


def setting(job: dict) -> str:
    """A training job's setting beyond system, batch and dropout, in words."""
    named = [job.get(key, "") for key in ("loop", "loss", "attention", "logits")]
    words = [f"{k} {v:g}" for k, v in job.get("model", {}).items()] + named
    return ", ".join(filter(None, words + list(job.get("env", {}).values())))


def jobs(smoke: bool) -> list[dict]:
    shape = SMOKE if smoke else WIDE
    block, steps = (32, 2) if smoke else (1024, 40)
    base = {"smoke": smoke, "shape": shape}
    out = [{**base, "kind": "parity", "name": "parity"}]
    trained = [(system, batch, dropout, {}, False) for system in ("tf_gpt2", "nanogpt", "hf")
               for batch, dropout in ((16, 0.0), (32, 0.0), (16, 0.1))]
    for system, batch, dropout, changed, lever in trained + [("tf_gpt2", *row, True) for row in LEVERS]:
        out.append({**base, "kind": "train", "system": system, "batch": 2 if smoke else batch, "dropout": dropout,
                    **changed, "lever": lever, "block": block, "steps": steps,
                    "name": f"train {system} b{batch} dropout {dropout} {setting(changed)}".strip()})
    for preset in PRESETS[:1] if smoke else PRESETS:
        for system in ("tf_gpt2", "hf"):
            for mode, remat in (("full", False), ("full", True), ("lora", True)):
                out.append({**base, "shape": SMOKE if smoke else None, "kind": "memory", "system": system,
                            "preset": preset, "mode": mode, "remat": remat, "block": block,
                            "name": f"memory {system} {preset} {mode}{' remat' if remat else ''}"})
    for system, dtypes in (("tf_gpt2", ("float32", "bfloat16")), ("hf", ("float32",)), ("hf-static", ("float32",))):
        for dtype in dtypes:
            out.append({**base, "kind": "decode", "system": system, "dtype": dtype, "batches": [1, 8],
                        "prompt": 4 if smoke else 32, "new": 8 if smoke else 128, "name": f"decode {system} {dtype}"})
    return out


# Bytes per parameter of a fine-tuning step's device peak, 1.5 GB added: every peak measured on 2026-12-04 (one H200,
# benchmarks/results/gpu-h200-2026-12-04.json) lies 0.8 to 4.3 GB below its estimate
MEMORY_PER_PARAM = {("tf_gpt2", "full", False): 17, ("tf_gpt2", "full", True): 15, ("hf", "full", False): 21,
                    ("hf", "full", True): 21, ("tf_gpt2", "lora", True): 3, ("hf", "lora", True): 3}


@functools.lru_cache(maxsize=None)
def _parameters(preset: str) -> int:
    return tensorflow_free("config").GPT2Config.from_preset(preset).num_params()


def estimated_bytes(job: dict) -> float:
    """A generous guess of a process's device peak, to share the GPU without running out."""
    if job["smoke"]:
        return 0
    if job["kind"] == "memory":
        per_param = MEMORY_PER_PARAM[job["system"], job["mode"], job["remat"]]
        return _parameters(job["preset"]) * per_param + 1.5 * GB
    if job["kind"] == "train":
        torch = 1.0 if job["system"] == "tf_gpt2" else 1.5  # its float32 copy of the logits
        return job["batch"] * (1.5 if job["dropout"] else 1.0) * 0.6 * torch * GB + 3 * GB  # 124M, T=1024
    return 6 * GB


def child_env(smoke: bool) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "TF_CPP_MIN_LOG_LEVEL": "3", "GPU_BENCH_PARENT": str(os.getpid()), "PYTHONPATH": os.pathsep.join(
               [os.path.dirname(HERE), HERE, *filter(None, [os.environ.get("PYTHONPATH")])])}
    if smoke:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    else:  # a CUDA plugin that fails to start fails the job, not falls back to the CPU (and runs for ever)
        env.setdefault("JAX_PLATFORMS", "cuda")
    return env


def die_with_parent(parent: int) -> None:
    """This job process ends when gpu.py does, however it ends, even while stopped: Linux sends it SIGKILL, which a
    stopped process takes (the SIGCONT it waits for would never come, and it would keep its GPU memory)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: no such call
        return
    if os.getppid() != parent:  # gpu.py ended before the call
        os._exit(1)


class Child:
    """One job in its own Python process; its errors go to a temporary file (a full pipe would stall it). A speed
    run (`timed`) says READY once compiled and warmed up, and is timed when told to go."""

    def __init__(self, job: dict, smoke: bool, timed: bool = False):
        self.job, self.errors, self.lines = job, tempfile.TemporaryFile("w+"), []
        self.started, self.seconds, self.is_ready = time.time(), {}, False
        env = child_env(smoke)
        for name, value in job.get("env", {}).items():  # a lever's flags join the caller's
            env[name] = " ".join(filter(None, [env.get(name), value]))
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--job", json.dumps(job)],
                                        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.errors, text=True)
        self.reader = threading.Thread(target=self._until_ready, daemon=True)
        if timed:
            self.reader.start()

    def _until_ready(self) -> None:
        for line in self.process.stdout:
            if line.startswith("READY"):
                self.seconds["ready"] = round(time.time() - self.started, 1)
                self.is_ready = True
                return
            self.lines.append(line)

    def go(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        """The job's result (its last JSON line), or {"error": the last line it wrote to stderr}; and its seconds, to
        "ready" (compiled and warmed up, for a speed run) and to its end."""
        if self.reader.ident:  # a speed run's: it has read up to READY, or to the end
            self.reader.join()
        out, _ = self.process.communicate()
        self.job["seconds"] = {**self.seconds, "end": round(time.time() - self.started, 1)}
        lines = [line for line in self.lines + out.splitlines() if line.startswith("{")]
        if self.process.returncode or not lines:
            self.errors.seek(0)
            said = [line for line in self.errors.read().splitlines() if line.strip()]
            error = (said or [f"exit {self.process.returncode}"])[-1]
            if OUT_OF_MEMORY.search(error) and not OUT_OF_MEMORY.search(error[-300:]):  # torch's says it mid-line
                error = f"out of memory: {error[-280:]}"
            error = error[-300:]
            self.job["result"] = {"error": error}
        else:
            self.job["result"] = json.loads(lines[-1])


def waves(todo: list[dict], limit: int, budget: float) -> list[list[dict]]:
    """`todo` in groups that share the GPU: at most `limit` jobs whose estimated peaks fit `budget` bytes; the levers'
    last (a run cut short by its --budget keeps the rows the docs quote), the largest first within each."""
    groups, group, used = [], [], 0.0
    for job in sorted(todo, key=lambda job: (bool(job.get("lever")), -estimated_bytes(job))):
        need = estimated_bytes(job)
        if group and (len(group) == limit or used + need > budget):
            groups.append(group)
            group, used = [], 0.0
        group.append(job)
        used += need
    return groups + ([group] if group else [])


class Pool:
    """The jobs whose speed is not measured (memory, parity), side by side on the GPU: a new one starts whenever the
    estimated peaks of all processes on the GPU leave room. It runs while speed processes compile, and is stopped
    (SIGSTOP) while one is timed."""

    def __init__(self, todo: list[dict], smoke: bool, report, budget: float, late=lambda jobs: False, limit: int = 8):
        self.waiting, self.running = sorted(todo, key=estimated_bytes, reverse=True), []
        self.smoke, self.report, self.budget, self.late, self.limit = smoke, report, budget, late, limit

    def step(self, reserved: float = 0.0, start: bool = True) -> None:
        """Report the finished jobs; start those that fit next to `reserved` bytes of speed processes."""
        for child in [c for c in self.running if c.process.poll() is not None]:
            self.running.remove(child)
            child.finish()
            self.report(child.job)
        if (self.waiting or self.running) and self.late(self.waiting):  # past the --budget: the jobs waiting say so,
            self.waiting = []  # and those still running are ended, saying so too
            for child in self.running:
                child.process.kill()
                child.finish()
                if "error" in child.job["result"]:  # (not one that ended by itself meanwhile)
                    self.late([child.job])
                self.report(child.job)
            self.running = []
        while start and self.waiting and len(self.running) < self.limit:
            used = reserved + self.in_use()
            fitting = next((job for job in self.waiting if used + estimated_bytes(job) <= self.budget), None)
            if fitting is None and (self.running or reserved):
                return
            fitting = fitting or self.waiting[0]  # nothing fits even alone: the largest runs by itself
            self.waiting.remove(fitting)
            self.running.append(Child(fitting, self.smoke))

    def in_use(self) -> float:
        return sum(estimated_bytes(child.job) for child in self.running)

    def make_room(self, reserved: float, patience: float = 300) -> None:
        """Wait, starting nothing, until `reserved` bytes of speed processes fit beside the pool's running jobs (for
        `patience` seconds at most: estimates are generous, and a job out of memory runs again alone at the end)."""
        until = time.time() + patience
        while self.running and reserved + self.in_use() > self.budget and time.time() < until:
            self.step(start=False)
            time.sleep(0.5)

    @contextlib.contextmanager
    def stopped(self):
        """The running jobs stopped (SIGSTOP) while the body times a speed process; each job's seconds count it."""
        paused, since = [c for c in self.running if c.process.poll() is None], time.time()
        try:
            for child in paused:
                child.process.send_signal(signal.SIGSTOP)
            time.sleep(0 if self.smoke else 2)  # the kernels the stopped processes had queued finish first
            yield
        finally:
            for child in paused:
                child.process.send_signal(signal.SIGCONT)
                child.seconds["stopped"] = round(child.seconds.get("stopped", 0) + time.time() - since, 1)

    def drain(self) -> None:
        while self.waiting or self.running:
            self.step()
            time.sleep(0.5)


def run_timed(group: list[dict], smoke: bool, report, pool: Pool, late=lambda jobs: False) -> None:
    """Compile and warm up side by side, the pool going on beside them; then, the pool stopped, time one process at a
    time, the others waiting. Past the --budget (`late`), a process still compiling or waiting its turn is ended, its
    row saying so: a wave started in time does not run on past it."""
    reserved = sum(estimated_bytes(job) for job in group)
    children = [Child(job, smoke, timed=True) for job in group]
    while any(child.reader.is_alive() for child in children) and not late([]):
        pool.step(reserved)
        time.sleep(0.5)
    with pool.stopped():
        for child in children:
            if child.is_ready and not late([]):
                child.go()
            elif late([]) and child.process.poll() is None:  # (one that ended by itself keeps its own error)
                child.process.kill()
                child.finish()
                late([child.job])
                report(child.job)
                continue
            child.finish()
            report(child.job)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-results", help="folder for results.json, results.md, ratios.png")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on a CPU: checks the harness")
    parser.add_argument("--parts", default="train,decode,parity,memory",
                        help="which: the speed runs (train, decode) in waves, the others beside their compiles")
    parser.add_argument("--only", default="", help="only the jobs whose name this regular expression finds")
    parser.add_argument("--parallel", type=int, default=4, help="speed processes compiling side by side")
    parser.add_argument("--share-gb", type=float, default=None,
                        help="estimated peaks of the processes run at once (default: 85%% of the GPU's free memory)")
    parser.add_argument("--budget", type=float, default=480,
                        help="seconds by which the run ends: a wave of speed runs starts only if one as long as the "
                        "longest so far would end by then, and the memory and parity runs still going then are ended")
    parser.add_argument("--profile", action="store_true", help="also trace tf_gpt2's training: time per kernel")
    parser.add_argument("--levers", action="store_true", help="also tf_gpt2's training with one setting changed")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # one measurement, in a child process
    args = parser.parse_args(argv)
    unknown = [part for part in args.parts.split(",") if part not in KINDS]
    if unknown:  # (a misspelt part ran nothing, and wrote tables of nothing)
        parser.error(f"--parts: unknown {', '.join(map(repr, unknown))}; choose among {', '.join(KINDS)}")
    if args.job:
        die_with_parent(int(os.environ.get("GPU_BENCH_PARENT", os.getppid())))
        job = json.loads(args.job)
        if job.get("profile"):  # XLA writes out the optimized train step: which layer each kernel computes for
            job["hlo_dir"] = tempfile.mkdtemp()
            os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_dump_hlo_as_text",
                                                             f"--xla_dump_to={job['hlo_dir']}",
                                                             "--xla_dump_hlo_module_re=train_step"]))
        print(json.dumps({"parity": parity, "train": train, "memory": memory, "decode": decode}[job["kind"]](job)))
        return 0
    todo = [job for job in jobs(args.smoke) if job["kind"] in args.parts.split(",")
            and (not args.smoke or job["name"] in SMOKE_JOBS) and re.search(args.only, job["name"])
            and (args.levers or args.smoke or not job.get("lever"))]
    if not todo:
        parser.error(f"no job is in --parts {args.parts}{f' and matches --only {args.only}' if args.only else ''} "
                     "(a lever's rows run with --levers; --smoke runs its own few)")
    if os.path.exists(os.path.join(args.out, "results.json")):  # minutes of a GPU's time: not replaced by the next run
        parser.error(f"{os.path.join(args.out, 'results.json')} holds an earlier run's results: give another --out, "
                     "or move them away first")
    os.makedirs(args.out, exist_ok=True)
    share_gb = args.share_gb
    if share_gb is None and not args.smoke:  # a smoke run's estimates are all 0: nothing to share
        free = free_gpu_gb()
        if free is None:
            print("note: nvidia-smi gave no free memory for this GPU; sharing 100 GB (--share-gb sets the estimated "
                  "peaks of the processes run at once)", file=sys.stderr)
        share_gb = 0.85 * free if free else 100.0
    budget = (share_gb or 0.0) * GB
    for job in todo:
        job["profile"] = args.profile and job["kind"] == "train" and job["system"] == "tf_gpt2"
    given = argv if argv is not None else sys.argv[1:]
    given = [a for a, before in zip(given, [None, *given])  # where it writes is not what it ran
             if before != "--out" and a != "--out" and not a.startswith("--out=")]
    results = {"date": time.strftime("%Y-%m-%d"), "command": shlex.join(["python", "benchmarks/gpu.py", *given]),
               "versions": versions(), "share_gb": budget / GB, "jobs": todo}
    began = time.time()

    def report(job):
        print(f"[{time.time() - began:5.0f} s] {job['name']} ({job['seconds']}): {json.dumps(job['result'])}",
              flush=True)
        write_outputs(results, args.out, chart=False)  # as it goes: a run cut short keeps its rows and tables

    def late(jobs: list[dict], ahead: float = 0.0) -> bool:
        """Past the --budget, or past it `ahead` seconds from now: the jobs are not run (their rows say so)."""
        if time.time() - began + ahead <= args.budget:
            return False
        for job in jobs:
            job["result"] = {"error": f"not run: past the --budget of {args.budget:.0f} s"}
        return True

    def ended(signum, frame):  # `timeout` ends the run: the chart too is drawn from what it measured
        results["seconds"] = time.time() - began
        write_outputs(results, args.out)
        sys.exit(128 + signum)  # the job processes end with this one (die_with_parent)

    before = signal.signal(signal.SIGTERM, ended)
    print(f"{len(todo)} runs into {args.out}; a --budget of {args.budget:.0f} s", flush=True)
    try:
        return _run(args, todo, results, began, report, late, budget)
    finally:
        signal.signal(signal.SIGTERM, before)


def _run(args, todo: list[dict], results: dict, began: float, report, late, budget: float) -> int:
    pool = Pool([job for job in todo if job["kind"] not in TIMED], args.smoke, report, budget, late,
                limit=2 if args.smoke else 8)
    longest = 0.0  # seconds of the longest wave so far: a wave starts if one as long would end within the --budget
    for group in waves([job for job in todo if job["kind"] in TIMED], args.parallel, budget):
        if late(group, ahead=longest):
            continue
        pool.make_room(sum(estimated_bytes(job) for job in group),  # the group was sized for the whole budget
                       patience=min(300.0, max(0.0, args.budget - (time.time() - began))))
        if not late(group, ahead=longest):
            started = time.time()
            run_timed(group, args.smoke, report, pool, late)
            longest = max(longest, time.time() - started)
    pool.drain()
    for job in [job for job in todo if OUT_OF_MEMORY.search(job["result"].get("error", ""))]:  # once more, alone
        if not late([job], ahead=longest):
            run_timed([job], args.smoke, report, Pool([], args.smoke, report, budget), late)
    results["seconds"] = time.time() - began
    write_outputs(results, args.out)
    print(open(os.path.join(args.out, "results.md")).read())
    return 0


def free_gpu_gb() -> float | None:
    """Free memory of the GPU the jobs will use (CUDA_VISIBLE_DEVICES' first), as nvidia-smi reports it without a
    CUDA context in this process; None where it cannot say (no nvidia-smi, a MIG slice)."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    try:
        out = subprocess.run(["nvidia-smi", "-i", gpu, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=60).stdout.split()
        return float(out[0]) * 2**20 / GB
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


# -- tables ------------------------------------------------------------------------------------------------------

def _rows(results: dict, kind: str) -> list[dict]:
    return [job for job in results["jobs"] if job["kind"] == kind and "result" in job]


def device_name(results: dict) -> str:
    return next((job["result"]["device"] for job in results["jobs"] if "device" in job.get("result", {})), "?")


def peak_flops(device: str) -> float | None:
    """Dense bf16 FLOP/s of the GPU `device` names (JAX's name for it), None where unknown ("L4" is not "L40S")."""
    return next((flops for name, flops in PEAK_BF16.items() if re.search(rf"\b{name}\b", device)), None)


def train_table(results: dict) -> str:
    peak = peak_flops(device_name(results))
    lines = ["| system | batch | dropout | tokens/s | MFU |", "|---|---:|---|---:|---:|"]
    for job in _rows(results, "train"):
        value = job["result"].get("tokens_per_s")
        dropout = ", ".join([f"{job['dropout']}"] + [setting(job)] * bool(setting(job)))
        per_token = TrainSetup(**job["shape"], block_size=job["block"], batch_size=job["batch"]).flops_per_token
        mfu = f"{value * per_token / peak:.1%}" if value and peak else "-"
        shown = f"{value:,.0f}" if value else f"failed: {job['result'].get('error', '?')}"
        lines.append(f"| {job['system']} | {job['batch']} | {dropout} | {shown} | {mfu} |")
    return "\n".join(lines)


def profile_section(results: dict) -> str:
    """Where a profiled training step's device time goes: by kind of kernel, then the costliest kernels."""
    parts = []
    for job in _rows(results, "train"):
        k = job["result"].get("kernels")
        if k:
            kinds = ", ".join(f"{kind} {ms:.1f}" for kind, ms in k["by_kind"].items())
            scopes = ", ".join(f"{where} {ms:.1f}" for where, ms in list(k.get("by_scope", {}).items())[:12])
            parts.append(f"**{job['name']}**: {k['ms_per_step']:.1f} ms per step on the device ({kinds}), "
                         f"{k['launches_per_step']:.0f} launches\n\n" + f"By layer: {scopes}\n\n" * bool(scopes)
                         + "\n".join(f"- {ms:.2f} ms, {n:.0f}x: `{name}`" for name, ms, n in k["top"][:8]))
    return "\n\n".join(parts)


def memory_cell(results: dict, system: str, preset: str, mode: str, remat: bool) -> str:
    row = next((j for j in _rows(results, "memory") if (j["system"], j["preset"], j["mode"], j["remat"]) ==
                (system, preset, mode, remat)), None)
    if row is None:
        return "-"
    peak, error = row["result"].get("peak_bytes"), row["result"].get("error")
    if peak:
        return f"{peak / GB:.1f} GB"
    if error is None:
        return "n/a (CPU)"
    return "not run" if error.startswith("not run") else "out of memory" if OUT_OF_MEMORY.search(error) else "failed"


def memory_table(results: dict) -> str:
    settings = (("full", False, "full"), ("full", True, "full, remat"), ("lora", True, "LoRA r8, bf16 base, remat"))
    lines = ["| preset | setting | tf_gpt2 | HF transformers |", "|---|---|---:|---:|"]
    for preset in PRESETS:
        for mode, remat, label in settings:
            ours, theirs = (memory_cell(results, s, preset, mode, remat) for s in ("tf_gpt2", "hf"))
            if ours != "-" or theirs != "-":
                lines.append(f"| {preset} | {label} | {ours} | {theirs} |")
    return "\n".join(lines)


def fit_table(results: dict) -> str:
    """For each GPU and preset, the fastest tf_gpt2 setting whose device peak plus the CUDA context fits (full, then
    `--remat`, then LoRA); "does not fit" only where every setting was measured too large (or ran out of memory);
    "not measured" where a setting before the first that fits was not (absent, failed, cut by --budget)."""
    settings = (("full", False, "full"), ("full", True, "full `--remat`"),  # (16-bit: bfloat16, float16 on a T4)
                ("lora", True, "LoRA, 16-bit base, `--remat`"))
    lines = ["| GPU | " + " | ".join(PRESETS) + " |", "|---|" + "---|" * len(PRESETS)]
    for gpu, size in GPUS.items():
        cells = []
        for preset in PRESETS:
            cell = "does not fit"
            for mode, remat, label in settings:
                shown = memory_cell(results, "tf_gpt2", preset, mode, remat)
                if not (shown.endswith(" GB") or shown == "out of memory"):
                    cell = "not measured"  # (a slower setting may fit, but this one is not known not to)
                    break
                if shown.endswith(" GB") and float(shown[:-3]) + CUDA_CONTEXT_GB <= size:
                    cell = f"{label} ({shown})"
                    break
            cells.append(cell)
        lines.append(f"| {gpu} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def decode_table(results: dict) -> str:
    lines = ["| system | dtype | batch 1 tokens/s | batch 8 tokens/s |", "|---|---|---:|---:|"]
    for job in _rows(results, "decode"):
        r = job["result"]
        cells = [f"{r[f'batch_{b}']:,.0f}" if f"batch_{b}" in r else f"failed: {r.get('error', '?')}" for b in (1, 8)]
        lines.append(f"| {job['system']} | {job['dtype']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def parity_line(results: dict) -> str:
    r = next((job["result"] for job in _rows(results, "parity")), {})
    if "max_abs_logit_diff" not in r:
        return f"parity: {r.get('error', 'not run')}"
    return (f"Parity with HF transformers on the same device, float32: max |logit diff| {r['max_abs_logit_diff']:.1e}; "
            f"greedy tokens equal {r['greedy_tokens_equal']}/{r['greedy_tokens']}")



def write_outputs(results: dict, out: str, chart: bool = True) -> None:
    """results.json, results.md and (`chart`) ratios.png, each whole or not at all."""
    write_results(os.path.join(out, "results.json"), results)
    v = results["versions"]
    text = (f"# tf_gpt2 on {device_name(results)}, {results['date']}\n\n`{results['command']}`; "
            + ", ".join(f"{k} {v[k]}" for k in v if v[k]) + "\n\n" + parity_line(results)
            + "\n\n## Training, GPT-2 124M, T=1024, AdamW, bf16\n\n" + train_table(results)
            + "\n\n## Fine-tuning step, T=1024, batch 1: device peak\n\n" + memory_table(results)
            + "\n\n## What fits where (device peak + 1 GB CUDA context)\n\n" + fit_table(results)
            + "\n\n## Decode, 32-token prompts, 128 new, greedy\n\n" + decode_table(results) + "\n"
            + ("\n## Where a training step's time goes (ms per step)\n\n" + profile_section(results) + "\n")
            * bool(profile_section(results)))
    write_whole(os.path.join(out, "results.md"), text)
    if chart:
        draw_chart(results, os.path.join(out, "ratios.png"))


def draw_chart(results: dict, path: str) -> None:
    """Bars: each training and decode figure as a ratio to HF transformers' in the same setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = {}
    train = {(j["system"], j["batch"], j["dropout"], setting(j)): j["result"].get("tokens_per_s")
             for j in _rows(results, "train")}
    for (system, batch, dropout, more), value in train.items():
        hf = train.get(("hf", batch, dropout, ""))
        if value and hf and system != "hf":
            bars[f"train {system} b{batch} d{dropout} {more}".strip()] = value / hf
    decode = {(j["system"], j["dtype"]): j["result"] for j in _rows(results, "decode")}
    for (system, dtype), r in decode.items():
        for b in (1, 8):
            hf = decode.get(("hf", "float32"), {}).get(f"batch_{b}")
            if system != "hf" and r.get(f"batch_{b}") and hf:
                bars[f"decode {system} {dtype} b{b}"] = r[f"batch_{b}"] / hf
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(bars) + 1.2))
    ax.barh(list(bars), list(bars.values()))
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_xlabel("tokens/s relative to HF transformers (same setting, same run)")
    ax.set_title(f"tf_gpt2 on {device_name(results)}, {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
