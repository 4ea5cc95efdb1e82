import atexit
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # (JAX arrays made in a test process stay off a GPU)
# XLA compiles the tests' programs with LLVM's optimizations off (`--xla_backend_optimization_level=0`, here and in
# the processes tests start): the programs are XLA's own (its HLO passes, fusions and kernels are chosen as
# always, matmuls are Eigen's or oneDNN's), only their generated machine code is less optimized (and may round
# elementwise math apart from a user's build), which tiny models do not feel. It saved about a quarter of the CPU time
# where tests compile most (53 against 41 CPU-s for three of test_generation.py's; the suite 1,887 CPU-s against
# 2,486, 2026-12-07, AMD EPYC). An XLA_FLAGS that sets the level itself is left alone:
# `XLA_FLAGS=--xla_backend_optimization_level=3 python -m pytest` runs the tests as users' programs are built.
XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):  # (the test workers inherit it)
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), XLA_TEST_FLAGS]))
# Tests never reach the network: a Hugging Face name that is not in a cache a test laid out fails loudly
# (read when huggingface_hub is imported, so before anything imports it; subprocesses inherit it).
os.environ["HF_HUB_OFFLINE"] = "1"
# and a socket connects to this machine only, and only its names are looked up, here and in the Python processes
# tests start (no_network/); each connection or lookup refused is written down, and fails the session
# (pytest_sessionfinish). The test workers (xdist) keep the file of the process that started them.
_NO_NETWORK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "no_network")
if "TF_GPT2_REFUSED_CONNECTIONS" not in os.environ:
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_NO_NETWORK, os.environ.get("PYTHONPATH")) if p)
    os.environ["TF_GPT2_REFUSED_CONNECTIONS"] = tempfile.mkstemp(prefix="tf_gpt2-refused-connections-")[1]
    atexit.register(lambda path=os.environ["TF_GPT2_REFUSED_CONNECTIONS"]: os.path.exists(path) and os.remove(path))
import no_network.sitecustomize  # noqa: E402,F401

# Caches go to one temporary folder per test session, not the home directory (subprocesses inherit it).
_CACHES = tempfile.mkdtemp(prefix="tf_gpt2-tests-")
atexit.register(shutil.rmtree, _CACHES, ignore_errors=True)
for _name in ("TF_GPT2_CACHE", "KERAS_HOME", "TIKTOKEN_CACHE_DIR", "HF_HOME"):
    os.environ[_name] = os.path.join(_CACHES, _name.lower())

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def make_hf_model(seed=0, **config):
    """A tiny random transformers.GPT2LMHeadModel (the reference implementation).

    Initialised with std 0.3, not GPT-2's 0.02: at 0.02 the logits are near-flat and a wrong constant moves
    them by as little as a tolerance (exact GELU for tanh's: under 1e-6; LayerNorm epsilon / 10: 9.5e-5 to 1.2e-4,
    the parity tests' 1e-4 itself); at 0.3 the same bugs move them by 1.2e-3 to 1.9e-3 and 2.5e-4 to 5.3e-4 while
    ours stays within 7.8e-6 of transformers' (measured on the parity tests' configs).
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    end = 50256 if config.get("vocab_size", 50257) >= 50257 else None  # <|endoftext|>, where the ids are GPT-2's
    defaults = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=end, eos_token_id=end,
                    initializer_range=0.3)
    cfg = transformers.GPT2Config(**{**defaults, **config})
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF zero-inits biases and sets LayerNorm to 1/0: randomise them so they are tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def spread_tiny_model():
    """gpt2-tiny with 64 positions, initialised with std 0.3: spread logits, so that greedy choices are not
    decided by rounding noise (the model of the export, serving and LiteRT tests)."""
    import keras

    from tf_gpt2 import GPT2, GPT2Config

    keras.utils.set_random_seed(0)
    return GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=64, initializer_range=0.3))


def padded_gpt2():
    """A tiny GPT-2 of 50,304 ids, nanoGPT's padding of GPT-2's 50,257 kept as real rows (as a converted checkpoint
    keeps them), each padding row 30 times a token's row: they outscore every token, so anything that lets them be
    chosen chooses one."""
    from tf_gpt2 import GPT2, GPT2Config

    model = GPT2(GPT2Config(vocab_size=50304, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    rows = model.wte.embeddings.numpy()
    rows[50257:] = 30 * rows[:50304 - 50257]
    model.wte.embeddings.assign(rows)
    return model


def give_adapters(model) -> None:
    """Every LoRA adapter of `model` set at random, so that they move its logits by about 1 (Keras starts B at zero:
    adapters that change nothing)."""
    for i, variable in enumerate(v for v in model.variables if "lora_kernel" in v.path):
        variable.assign(np.random.RandomState(i).normal(0, 0.2, variable.shape))


def lora_model(dtype: str = "float32"):
    """A tiny GPT2 of dtype policy `dtype` with LoRA adapters that matter (`tf-gpt2 train --lora-rank 2`, with
    `--base-dtype bfloat16` for a bfloat16 policy)."""
    import keras

    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.training import enable_lora

    keras.utils.set_random_seed(0)
    model = GPT2(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3),
                 dtype=dtype)
    enable_lora(model, 2)
    give_adapters(model)
    return model


@pytest.fixture(scope="session")
def served_tiny(tmp_path_factory):
    """`spread_tiny_model`'s SavedModel (answers of up to 16 new tokens), shared by the tests that only read or serve
    it; written under the common umask 022, once per test run (the first test process to need it exports it)."""
    import filelock

    from tf_gpt2.export import export_saved_model

    base = _shared_by_test_processes(tmp_path_factory) / "served_tiny" / "gpt2"
    with filelock.FileLock(f"{base.parent}.lock"):
        if not (base / "1" / "saved_model.pb").exists():
            previous = os.umask(0o022)
            try:
                export_saved_model(spread_tiny_model(), str(base), version=1, max_new_tokens_limit=16)
            finally:
                os.umask(previous)
    return str(base / "1")


def console_script() -> str:
    """The installed `tf-gpt2` command: the README's install puts it beside the interpreter."""
    import shutil
    import sys

    path = shutil.which("tf-gpt2", path=os.path.dirname(sys.executable))
    assert path, f"no tf-gpt2 beside {sys.executable}: install the package (pip install -e .)"
    return path


def hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


@pytest.fixture(autouse=True, scope="module")
def _seed_module_fixtures():
    """Module fixtures that build random models start from one seed, so their weights never depend on which
    tests ran before (autouse fixtures of a scope run before the others of that scope)."""
    import keras

    keras.utils.set_random_seed(0)


@pytest.fixture(autouse=True)
def _seed_each_test():
    import keras

    keras.utils.set_random_seed(0)


@pytest.fixture(autouse=True)
def _restore_umask():
    """Tests that set the umask (to check the permissions of what is published) get it back afterwards."""
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.umask(mask)


@pytest.fixture
def rng():
    return np.random.RandomState(0)


@pytest.fixture(scope="session")
def tiktoken_gpt2(tmp_path_factory):
    """tiktoken's own "gpt2" encoding, fed the same files offline through its cache."""
    import hashlib

    import tiktoken

    from tf_gpt2.tokenizer import default_vocab_files

    cache = tmp_path_factory.mktemp("tiktoken-cache")
    encoder_json, vocab_bpe = default_vocab_files()
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for url, path in ((base + "encoder.json", encoder_json), (base + "vocab.bpe", vocab_bpe)):
        shutil.copy(path, cache / hashlib.sha1(url.encode()).hexdigest())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding("gpt2")
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def shakespeare():
    import gzip

    from tf_gpt2 import GPT2Tokenizer
    from tf_gpt2.data import embedded_corpus

    with gzip.open(embedded_corpus(), "rt", encoding="utf-8") as f:
        return np.array(GPT2Tokenizer().encode(f.read(250_000)), np.int32)


@pytest.fixture(scope="session")
def held_out(shakespeare):
    return shakespeare[-200:].tolist()


@pytest.fixture(scope="session")
def trained(shakespeare, tmp_path_factory):
    """gpt2-tiny trained briefly on the embedded Shakespeare with the GPT-2 BPE: peaked, text-like predictions.

    Trained once per test run: the first test process to need it trains and saves it, the others load it. It trains
    in a process of its own, where XLA optimizes the machine code as always (without `XLA_TEST_FLAGS`): its 300
    steps are time spent running, not compiling, and took 74 CPU-seconds more under those flags."""
    import filelock

    from tf_gpt2 import GPT2, GPT2Config

    model = GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=64))
    shared = _shared_by_test_processes(tmp_path_factory) / "trained.weights.h5"
    with filelock.FileLock(f"{shared}.lock"):
        if not shared.exists():
            np.save(f"{shared}.tokens.npy", shakespeare[:-200])
            flags = os.environ["XLA_FLAGS"].replace(XLA_TEST_FLAGS, "").strip()  # (a level the user set: kept)
            run = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(shared)], capture_output=True, text=True,
                                 env={**os.environ, "XLA_FLAGS": flags}, timeout=900)
            assert run.returncode == 0, run.stderr[-3000:]
    model.load_weights(shared)
    return model


TRAIN_SCRIPT = """
import sys
import keras
import numpy as np
from tf_gpt2 import GPT2, GPT2Config

shared = sys.argv[1]
keras.utils.set_random_seed(0)
model = GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=64))
# 300 steps of 8 windows (on this machine's CPU half the time of 16 windows, and as varied greedy choices: 7-8
# distinct over the 47 held-out tokens, against 6; 150 steps of 16 gave 2)
tokens = np.load(shared + ".tokens.npy")
starts = np.random.RandomState(0).randint(0, len(tokens) - 33, 300 * 8)
windows = tokens[starts[:, None] + np.arange(33)]
model.compile(optimizer=keras.optimizers.AdamW(5e-3), jit_compile=True,
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
history = model.fit(windows[:, :-1], windows[:, 1:], batch_size=8, epochs=1, verbose=0)
assert history.history["loss"][-1] < 6.5, history.history  # it learned something (log 50257 = 10.8)
model.save_weights(shared)
"""


def _shared_by_test_processes(tmp_path_factory):
    """This test run's temporary folder that every test process (pytest-xdist worker) sees."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


# The test files that take longest start first, so that the test processes (pytest.ini: one file at a time
# each, `--no-loadscope-reorder`) finish together rather than one running a long file alone at the end.
LONGEST_FIRST = ("test_doc_blocks.py", "test_training.py", "test_train_jax.py", "test_quantization.py",
                 "test_tf_serving.py", "test_benchmark.py", "test_litert.py", "test_notebook.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file, and of the other files, is kept


def pytest_sessionfinish(session, exitstatus):
    """A connection off this machine (or a lookup of another's name) fails the session, even where the code that
    tried caught the refusal."""
    if hasattr(session.config, "workerinput"):  # a test worker: the process that started it says it, once
        return
    with open(os.environ["TF_GPT2_REFUSED_CONNECTIONS"], encoding="utf-8") as f:
        refused = f.read()
    if refused:
        print(f"\ntests reached for the network (refused):\n{refused}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # A skipped test fails the session too: the test command installs all the tests import (the [dev] extra), so a
    # skip is a missing piece (a parity test without transformers), never a test that does not apply here.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if skipped := reporter and reporter.stats.get("skipped"):
        reasons = sorted({str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else report.nodeid
                          for report in skipped})
        print(f"\n{len(skipped)} test(s) skipped, which fails the run: {'; '.join(reasons[:5])} (pip install -e "
              "'.[dev]' installs what they need)", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
