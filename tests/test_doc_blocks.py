"""Every fenced `bash` or `python` block in README.md and docs/ runs as printed, or carries a
`<!-- not run: reason -->` line just above its fence. The blocks run in one working directory, the README's
first and then each page of docs/ in name order, each block in a fresh process, the way a reader pastes them; a
block that runs the same as one already run (its `pip install` lines aside) is not run again.

The switch that makes them small (nothing else in a block is changed):
- Hub names (`gpt2` ... `gpt2-xl`, `openai-community/gpt2-medium`) resolve offline from a local Hub cache holding
  tiny GPT-2s under those names (GPT-2's vocabulary and 1,024 positions, 2 layers, 32 wide); `path/to/gpt2` is one
  of them on disk; `my_texts/` holds three texts (plain, gzip, CRLF with non-Latin lines); `wiki.test.raw` is a
  page of WikiText.
- `--steps N` runs 2 steps, `tf-gpt2 train` evaluates 1 validation batch (`--eval-batches 1`, instead of 20),
  writes no sample (`--sample-tokens 0`) and compiles without XLA (`--no-xla`: XLA's compile takes longer than it
  saves over two steps of a tiny model; tests/test_training.py trains these settings under XLA), and
  `steps_per_epoch=N, epochs=M` runs 2 steps in 1 epoch.
- Training windows are smaller: `gpt2-mini` is `gpt2-tiny` (128 positions), and a batch is 2 windows
  (`--batch-size`, `batch_size=`) of 64 tokens (`tf-gpt2 train` gets `--block-size 64`; `block_size=` is 64), of
  which `--grad-accum N` accumulates 2.
- `pip install` lines are left out: the tests run where `pip install -e ".[dev]"` installed every extra.
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
BLOCK = re.compile(r"(?:<!-- not run: (?P<reason>[^>]*?) -->\n)?^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$", re.S | re.M)
SMALLER = ((re.compile(r"--steps \d+"), "--steps 2"),
           (re.compile(r"\btf-gpt2 train "),
            "tf-gpt2 train --eval-batches 1 --sample-tokens 0 --no-xla --block-size 64 "),
           (re.compile(r"steps_per_epoch=\d+, epochs=\d+"), "steps_per_epoch=2, epochs=1"),
           (re.compile(r"(--batch-size |batch_size=)\d+"), r"\g<1>2"),
           (re.compile(r"(--block-size |block_size=)\d+"), r"\g<1>64"),
           (re.compile(r"\bgpt2-mini\b"), "gpt2-tiny"),
           (re.compile(r"--grad-accum \d+"), "--grad-accum 2"))
HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "openai-community/gpt2-medium")


def blocks(page: str) -> list[dict]:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = f.read()
    return [m.groupdict() for m in BLOCK.finditer(text) if m["lang"] in ("bash", "python")]


def as_run(block: dict) -> str:
    """The block as the test runs it: smaller by the switch above, `pip install` lines left out."""
    body = "\n".join(line for line in block["body"].splitlines() if not line.startswith("pip install"))
    for pattern, replacement in SMALLER:
        body = pattern.sub(replacement, body)
    return body


def test_blocks_that_do_not_run_say_why():
    marked = [(page, b["reason"]) for page in PAGES for b in blocks(page) if b["reason"] is not None]
    assert marked and all(len(reason.split()) >= 3 for _, reason in marked), marked
    assert sum(len(blocks(page)) for page in PAGES) > 2 * len(marked)  # most blocks run


def lay_out_reader_files(root) -> None:
    """What a reader of the docs has at hand: the Hub (here a local cache of tiny GPT-2s), a GPT-2 on disk, texts."""
    from conftest import make_hf_model
    from local_hub import lay_out_cache, read_files

    model_dir = root / "path" / "to" / "gpt2"
    make_hf_model(vocab_size=50257, n_positions=1024, n_embd=32, n_layer=2, n_head=2).save_pretrained(model_dir)
    for name in HUB_NAMES:
        lay_out_cache(str(root / "hub"), name, read_files(str(model_dir)))
    texts = root / "my_texts"
    texts.mkdir()
    line = "The quick brown fox jumps over the lazy dog, and the dog sleeps on. "
    (texts / "a.txt").write_text(line * 400, encoding="utf-8")
    (texts / "b.txt.gz").write_bytes(gzip.compress((line * 300).encode()))
    (texts / "c.txt").write_bytes(("Привет, мир. 你好，世界。 Ünïcödé text\r\n" * 300).encode())
    (root / "wiki.test.raw").write_text(" = Valkyria Chronicles = \n\n" + " The game began development in 2010 ."
                                        * 300 + "\n", encoding="utf-8")


def test_every_block_runs_as_printed(tmp_path):
    lay_out_reader_files(tmp_path)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    env.pop("KERAS_BACKEND", None)
    done = set()
    for page in PAGES:
        for block in (b for b in blocks(page) if b["reason"] is None and as_run(b) not in done):
            code = as_run(block)
            done.add(code)
            command = ([sys.executable, "-c", code] if block["lang"] == "python"
                       else ["bash", "-euo", "pipefail", "-c", code])
            started = time.perf_counter()
            run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
            print(f"{page}: {time.perf_counter() - started:.0f} s: {code.splitlines()[0][:80]}")
            assert run.returncode == 0, (f"{page}: this block failed:\n{code}\n\n{run.stdout[-2000:]}\n"
                                         f"{run.stderr[-3000:]}")
