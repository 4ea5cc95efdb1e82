import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest


def make_hf_model(seed=0, **config):
    """A tiny random transformers.GPT2LMHeadModel (the reference implementation)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    defaults = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    cfg = transformers.GPT2Config(**{**defaults, **config})
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF zero-inits biases and sets LayerNorm to 1/0: randomise them so they are tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


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


@pytest.fixture
def rng():
    return np.random.RandomState(0)


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
def trained(shakespeare):
    """gpt2-tiny trained briefly on the embedded Shakespeare with the GPT-2 BPE: peaked, text-like predictions."""
    import keras

    from tf_gpt2 import GPT2, GPT2Config

    keras.utils.set_random_seed(0)
    tokens = shakespeare[:-200]
    starts = np.random.RandomState(0).randint(0, len(tokens) - 33, 300 * 16)
    windows = tokens[starts[:, None] + np.arange(33)]
    model = GPT2(GPT2Config.from_preset("gpt2-tiny", n_positions=64))
    model.compile(optimizer=keras.optimizers.AdamW(5e-3), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(windows[:, :-1], windows[:, 1:], batch_size=16, epochs=1, verbose=0)
    assert history.history["loss"][-1] < 6.5  # it learned something (log 50257 = 10.8)
    return model
