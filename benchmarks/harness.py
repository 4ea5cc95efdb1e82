"""Training and decode throughput of tf_gpt2 next to its peers (`python benchmarks/bench.py`), each system in its own
process, one after the other, so that no framework's threads slow another's. Peers: keras-hub's
GPT2CausalLM (TF, XLA), Hugging Face transformers GPT-2 (torch eager and torch.compile), a nanoGPT-style
torch model, and, for decoding, the LiteRT interpreter.
Training FLOP/s use nanoGPT's count, 6·N + 12·L·D·T per token, against a measured float32 matmul roof.

>>> setup = TrainSetup(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=2, vocab_size=64, steps=1)
>>> results = run(["train"], ["tf_gpt2"], train=setup, report=lambda line: None)
>>> results["train"]["tf_gpt2"] > 0
True
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

if TYPE_CHECKING:
    from tf_gpt2.config import GPT2Config

HERE = os.path.dirname(os.path.abspath(__file__))  # the benchmarks folder: its modules import each other flat
ROOT = os.path.dirname(HERE)  # the checkout whose tf_gpt2 is measured, not another one installed in the environment
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)


# The CPU's matrix instructions that decide how fast a float32 or bfloat16 matmul runs, as /proc/cpuinfo flags them.
MATRIX_FEATURES = (("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"), ("amx_tile", "AMX"))


def machine() -> str:
    """The host a figure was measured on, by its CPU's name and matrix instructions (hosts of one architecture differ
    a lot: AMD or Intel, AVX-512 or AMX), e.g. "AMD EPYC (x86_64; AVX-512, AVX-512 BF16, no AMX), 2 cores"."""
    name, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:  # the first processor's lines, "key\t: value"
            first = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in first.items()}
        name, flags = fields.get("model name") or name, set(fields.get("flags", "").split())
    except OSError:
        pass
    features = [label if flag in flags else f"no {label}" for flag, label in MATRIX_FEATURES] if flags else [
        "instructions not read"]
    return f"{name or 'unknown CPU'} ({platform.machine()}; {', '.join(features)}), {os.cpu_count()} cores"


def conditions() -> tuple[float, str]:
    """The load average now, and the line a run's report starts with: the date and time, `machine()` and that load."""
    load = round(os.getloadavg()[0], 2)
    return load, f"{time.strftime('%Y-%m-%d %H:%M')}, {machine()}, load average {load:.2f}"


# The packages whose versions a figure depends on (those not installed are recorded as None).
MEASURED_PACKAGES = ("tensorflow", "keras", "keras-hub", "jax", "jaxlib", "torch", "transformers", "peft",
                     "ai-edge-litert", "litert-lm", "ctranslate2", "tiktoken", "numpy")


def versions() -> dict:
    """The installed versions of MEASURED_PACKAGES, read from their metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in MEASURED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident memory: Linux's VmHWM, its own pages since it started. `getrusage`'s ru_maxrss is
    not that: exec keeps the peak of the memory it replaces, so a child started from a larger parent reports the
    parent's peak. Elsewhere, ru_maxrss (KiB, but bytes on macOS)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        return int(kib) * 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def tensorflow_free(module: str):
    """`tf_gpt2.<module>` for a module that imports no TensorFlow (config, formats), without loading TensorFlow.

    The package's `__init__` loads the model, and with it Keras and TensorFlow (0.7 GB resident): a torch or
    CTranslate2 peer's process must not hold that, or it counts in the peer's peak memory. As in the `tf-gpt2`
    launcher, the package is made from its spec without running its `__init__`, the module is loaded, and the
    half-made package is dropped again (a later `import tf_gpt2` runs in full). In a process that has loaded
    tf_gpt2 already, the module is the package's own.
    """
    if "tf_gpt2" in sys.modules:
        return importlib.import_module(f"tf_gpt2.{module}")
    sys.modules["tf_gpt2"] = importlib.util.module_from_spec(importlib.util.find_spec("tf_gpt2"))
    try:
        return importlib.import_module(f"tf_gpt2.{module}")
    finally:
        for name in [name for name in sys.modules if name == "tf_gpt2" or name.startswith("tf_gpt2.")]:
            del sys.modules[name]


def refuse_earlier_results(parser, path: str | None) -> None:
    """Refuse, before minutes of measuring, a `--json` the figures could not be written to at the end: a results file
    that holds an earlier run's (benchmarks/results/ keeps those the docs cite), a folder, or a folder not there."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"--json {path} is a folder: name the file to write in it")
    if os.path.exists(path):
        parser.error(f"{path} holds an earlier run's results: give --json another name, or move it away first")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        parser.error(f"--json {path}: its folder {folder} is not there, or cannot be written to")


def write_whole(path: str, text: str) -> None:
    """`text` into `path`, whole or not at all (a run killed while writing leaves no half a file)."""
    files = tensorflow_free("files")
    files.atomic_write(path, files.bytes_writer(text.encode()))


def write_results(path: str, record: dict) -> None:
    """`record` as JSON into `path`, whole or not at all, with the versions it was measured with (`versions()`,
    where the record does not give them) and the load average now (a record gives the one at its start, and the
    threads its systems had)."""
    write_whole(path, json.dumps({**record, "versions": record.get("versions") or versions(),
                                  "load_average_at_end": round(os.getloadavg()[0], 2)}, indent=1))


def _ours(config: GPT2Config, **kwargs):
    """tf_gpt2's model of this shape (the package loads here, TensorFlow with it)."""
    from tf_gpt2 import GPT2, GPT2Config

    return GPT2(GPT2Config(**config.to_dict()), **kwargs)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """One training step's shapes: a GPT-2 of this size, `batch_size` x `block_size` tokens, AdamW."""

    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    block_size: int = 256
    batch_size: int = 8
    vocab_size: int = 50304
    steps: int = 10
    torch_compile: bool = True  # the torch.compile'd peers (off in the smoke run: compiling takes half a minute)

    @property
    def config(self) -> GPT2Config:
        return tensorflow_free("config").GPT2Config(vocab_size=self.vocab_size, n_positions=self.block_size,
                                                    n_embd=self.n_embd, n_layer=self.n_layer, n_head=self.n_head)

    @property
    def flops_per_token(self) -> int:
        """Forward + backward matmul FLOPs per token (nanoGPT's estimate: 6·N plus attention)."""
        return 6 * self.config.num_params(non_embedding=True) + 12 * self.n_layer * self.n_embd * self.block_size

    def describe(self) -> str:
        return (f"L{self.n_layer}/H{self.n_head}/D{self.n_embd}/T{self.block_size}/B{self.batch_size}/"
                f"V{self.vocab_size}, {self.config.num_params() / 1e6:.1f}M parameters, AdamW")


@dataclasses.dataclass(frozen=True)
class DecodeSetup:
    """Greedy decoding of `new_tokens` after a random `prompt_tokens` prompt, batch 1, random weights."""

    preset: str = "gpt2"
    prompt_tokens: int = 32
    new_tokens: int = 128
    repeats: int = 2

    @property
    def config(self) -> GPT2Config:
        return tensorflow_free("config").GPT2Config.from_preset(self.preset)

    @property
    def prompt(self) -> list[int]:
        return np.random.RandomState(0).randint(0, self.config.vocab_size, self.prompt_tokens).tolist()

    def describe(self) -> str:
        return f"{self.preset}, batch 1, prompt {self.prompt_tokens}, {self.new_tokens} new, greedy"


SMOKE_TRAIN = TrainSetup(n_layer=2, n_head=2, n_embd=64, block_size=32, batch_size=2, vocab_size=512, steps=2,
                         torch_compile=False)
SMOKE_DECODE = DecodeSetup(preset="gpt2-tiny", prompt_tokens=4, new_tokens=8, repeats=1)


def best_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of `repeats` calls after one warm-up call (so compilation is not measured)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_roof(n: int = 2048) -> float:
    """FLOP/s of a compiled n x n float32 TensorFlow matmul: what this machine can do at best."""
    import tensorflow as tf

    a, b = tf.random.normal((n, n), seed=0), tf.random.normal((n, n), seed=1)
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)), jit_compile=True)
    return 2 * n**3 / best_seconds(lambda: product().numpy(), repeats=5)


# Training: each system gives a step(batch) that runs one optimizer update on batch[:, :-1] -> batch[:, 1:].

def _keras_step(model, inputs_of):
    import keras

    model.compile(optimizer=keras.optimizers.AdamW(3e-4), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return lambda batch: model.train_on_batch(inputs_of(batch[:, :-1]), batch[:, 1:])


def _torch_step(model, logits_of, compile_model: bool):
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    forward = torch.compile(logits_of) if compile_model else logits_of

    def step(batch):
        batch = torch.from_numpy(batch).long()
        logits = forward(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _keras_hub_lm(cfg: GPT2Config):
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=cfg.vocab_size, num_layers=cfg.n_layer, num_heads=cfg.n_head, hidden_dim=cfg.n_embd,
        intermediate_dim=4 * cfg.n_embd, max_sequence_length=cfg.n_positions, dropout=0.0)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def torch_on_every_cpu() -> None:
    """torch's threads on every logical CPU, as TensorFlow's, XLA's, LiteRT's and CTranslate2's here (torch's own
    default is one a physical core): no system is timed with fewer threads than another."""
    import torch

    torch.set_num_threads(os.cpu_count())


def _hf_model(cfg: GPT2Config):
    """transformers' GPT-2 of `cfg`'s shape and dropout rates, random weights."""
    import transformers

    torch_on_every_cpu()

    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, bos_token_id=0, eos_token_id=0,
        **{name: cfg.dropout_rate(name) for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}))


def _nanogpt(cfg: GPT2Config):
    from torch_nanogpt import NanoGPT

    torch_on_every_cpu()
    return NanoGPT(cfg)


def _hf_trainer(compile_model: bool):
    def trainer(s: TrainSetup):
        model = _hf_model(s.config)
        return _torch_step(model, lambda x: model(input_ids=x).logits, compile_model and s.torch_compile)
    return trainer


def _nanogpt_trainer(s: TrainSetup):
    model = _nanogpt(s.config)
    return _torch_step(model, model, compile_model=s.torch_compile)


TRAINERS: dict[str, tuple[str, Callable]] = {
    "tf_gpt2": ("tf_gpt2 (TF, XLA)", lambda s: _keras_step(_ours(s.config), lambda x: x)),
    "keras-hub": ("keras-hub GPT2CausalLM (TF, XLA)", lambda s: _keras_step(
        _keras_hub_lm(s.config), lambda x: {"token_ids": x, "padding_mask": np.ones_like(x)})),
    "hf": ("HF transformers GPT-2 (torch eager)", _hf_trainer(False)),
    "hf-compile": ("HF transformers GPT-2 (torch.compile)", _hf_trainer(True)),
    "nanogpt": ("nanoGPT-style (torch.compile)", _nanogpt_trainer),
}


def train_tokens_per_second(step: Callable[[np.ndarray], object], s: TrainSetup) -> float:
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, s.vocab_size, (s.batch_size, s.block_size + 1)).astype(np.int32)
               for _ in range(s.steps + 3)]
    for batch in batches[:3]:  # compile and warm up
        step(batch)
    start = time.perf_counter()
    for batch in batches[3:]:
        step(batch)
    return s.steps * s.batch_size * s.block_size / (time.perf_counter() - start)


# Decoding: each system gives a run() that greedily generates s.new_tokens after s.prompt.

def _decode_ours(s: DecodeSetup):
    model = _ours(s.config)
    return lambda: model.generate(s.prompt, max_new_tokens=s.new_tokens, stop_ids=[])


def _decode_keras_hub(s: DecodeSetup):
    lm = _keras_hub_lm(s.config)
    lm.compile(sampler="greedy")
    lm.jit_compile = True  # "auto" turns XLA off on CPU
    length = s.prompt_tokens + s.new_tokens
    ids, mask = np.zeros((1, length), np.int32), np.zeros((1, length), bool)
    ids[0, : s.prompt_tokens], mask[0, : s.prompt_tokens] = s.prompt, True
    return lambda: lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)


def _decode_hf(s: DecodeSetup):
    import torch

    model, ids = _hf_model(s.config).eval(), torch.tensor([s.prompt])

    def run():
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=s.new_tokens,
                           min_new_tokens=s.new_tokens, do_sample=False, pad_token_id=0)
    return run


def _decode_nanogpt(s: DecodeSetup):
    import torch

    model = _nanogpt(s.config).eval()
    return lambda: model.generate(torch.tensor([s.prompt]), s.new_tokens)


def _decode_litert(quantize: str):
    def decoder(s: DecodeSetup, report: Callable[[str], None]):
        from tf_gpt2.litert import LiteRTGenerator, litert_bytes

        model = _ours(s.config)
        flatbuffer = litert_bytes(model, cache_length=s.prompt_tokens + s.new_tokens, quantize=quantize)
        generator = LiteRTGenerator(flatbuffer, num_threads=os.cpu_count())  # as many threads as the peers use
        expected = model.generate(s.prompt, max_new_tokens=s.new_tokens, stop_ids=[])
        agreement = np.mean(np.array(generator.generate(s.prompt, max_new_tokens=s.new_tokens)) == np.array(expected))
        report(f"LiteRT {quantize}: {agreement:.0%} of greedy tokens equal the Keras model's")
        return lambda: generator.generate(s.prompt, max_new_tokens=s.new_tokens)
    return decoder


DECODERS: dict[str, tuple[str, Callable]] = {
    "tf_gpt2": ("tf_gpt2 (TF, XLA while-loop, KV cache)", lambda s, report: _decode_ours(s)),
    "keras-hub": ("keras-hub GPT2CausalLM (TF, XLA)", lambda s, report: _decode_keras_hub(s)),
    "hf": ("HF transformers GPT-2 (torch, KV cache)", lambda s, report: _decode_hf(s)),
    "nanogpt": ("nanoGPT-style (torch, no KV cache)", lambda s, report: _decode_nanogpt(s)),
    "litert": ("tf_gpt2 LiteRT fp32 (interpreter)", _decode_litert("fp32")),
    "litert-int8": ("tf_gpt2 LiteRT int8 (interpreter)", _decode_litert("int8")),
}
SYSTEMS = sorted(set(TRAINERS) | set(DECODERS))


def table(title: str, rows: dict[str, float], labels: dict[str, str], flops_per_token: int | None = None,
          roof: float | None = None) -> str:
    """A Markdown table of tokens/s with ratios to HF eager torch (or the first row), and FLOP/s if given."""
    if not rows:
        return f"{title}: no system ran"
    baseline = "hf" if "hf" in rows else next(iter(rows))
    lines = [f"{title}  ({time.strftime('%Y-%m-%d')}, {machine()})", "",
             f"| system | tokens/s | vs {labels[baseline]} |" + (" GFLOP/s | of roof |" if flops_per_token else ""),
             "|---|---:|---:|" + ("---:|---:|" if flops_per_token else "")]
    for key, value in rows.items():
        line = f"| {labels[key]} | {value:,.1f} | {value / rows[baseline]:.2f}x |"
        if flops_per_token:
            line += f" {value * flops_per_token / 1e9:,.0f} | {value * flops_per_token / roof:.0%} |"
        lines.append(line)
    return "\n".join(lines)


def measure(part: str, key: str, setup: dict) -> dict:
    """One system's tokens/s for `part` ("train" or "decode"), measured in this process, with any notes it
    reported; {"skipped": reason} when a peer's library is not installed."""
    notes: list[str] = []
    try:
        if part == "train":
            s = TrainSetup(**setup)
            value = train_tokens_per_second(TRAINERS[key][1](s), s)
        else:
            s = DecodeSetup(**setup)
            generate = DECODERS[key][1](s, notes.append)
            value = s.new_tokens / best_seconds(generate, repeats=s.repeats)
    except ImportError as e:
        return {"skipped": str(e)}
    return {"tokens_per_second": value, "notes": notes}


def in_own_process(code: str, module: str = "harness", keep_going: bool = False) -> dict:
    """Run `code` in a fresh Python, with benchmark `module` imported as `m`: no framework's threads slow another's.

    Returns the JSON of its last printed line ({} when it prints nothing). A failure raises, or with `keep_going`
    comes back as {"error": its last line}.
    """
    prelude = f"import sys; sys.path[0:0] = [{HERE!r}, {ROOT!r}]; import json, {module} as m; "
    run = subprocess.run([sys.executable, "-c", prelude + code],
                         capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if run.returncode != 0:
        if keep_going:
            return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"}
        raise RuntimeError(f"benchmark process failed:\n{run.stderr[-3000:]}")
    lines = run.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def run(what: Iterable[str] = ("train", "decode"), systems: Iterable[str] | None = None,
        train: TrainSetup = TrainSetup(), decode: DecodeSetup = DecodeSetup(),
        report: Callable[[str], None] = print) -> dict:
    """Time each chosen system, each in its own process one after the other, and report the tables;
    returns {"train"|"decode": {system: tokens/s}, ...}. A peer whose library is missing is reported as skipped."""
    what, systems = list(what), list(SYSTEMS if systems is None else systems)
    unknown = sorted(set(systems) - set(SYSTEMS)) + sorted(set(what) - {"train", "decode"})
    if unknown:
        raise ValueError(f"unknown benchmark system or part {unknown}; systems: {SYSTEMS}, parts: train, decode")
    load, started = conditions()
    results: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "threads": os.cpu_count(),
                     "load_average_at_start": load}
    report(f"{started}; each system in its own process")
    for part, setup, registry in (("train", train, TRAINERS), ("decode", decode, DECODERS)):
        if part not in what:
            continue
        rows = {}
        for key in (k for k in registry if k in systems):
            result = in_own_process(f"print(json.dumps(m.measure({part!r}, {key!r}, {dataclasses.asdict(setup)!r})))")
            if "skipped" in result:
                report(f"skipped {registry[key][0]}: {result['skipped']}")
                continue
            for note in result["notes"]:
                report(note)
            rows[key] = result["tokens_per_second"]
        labels = {k: label for k, (label, _) in registry.items()}
        if part == "train" and not train.torch_compile:  # (the smoke run: no row says it compiled)
            labels = {k: label.replace("(torch.compile)", "(torch eager: compile off)") for k, label in labels.items()}
        if part == "train":
            roof = in_own_process("print(json.dumps({'roof': m.matmul_roof()}))")["roof"]
            report(f"matmul roof: {roof / 1e9:,.0f} GFLOP/s (2048x2048 float32, TF XLA)")
            report(table(f"Training tokens/s, {train.describe()}", rows, labels, train.flops_per_token, roof))
            results.update(train=rows, matmul_roof_flops=roof, train_flops_per_token=train.flops_per_token)
        else:
            report(table(f"Decode tokens/s, {decode.describe()}", rows, labels))
            results.update(decode=rows)
    return results
