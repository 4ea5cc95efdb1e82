"""Does the test suite catch plausible bugs? Each mutant is a one-line change to the package (a wrong constant, an
off-by-one, a non-atomic write, ...), applied to a copy of the tree; the tests that cover that module run against it,
and a mutant is killed when they fail. Prints the kill rate.

    python benchmarks/mutants.py                 # every mutant (about 15 minutes on 2 cores, and the tests unmutated)
    python benchmarks/mutants.py --only gelu     # mutants whose name contains "gelu"

Only the tests listed with a mutant run (the whole suite can only kill more), first once on an unmutated copy: a test
that fails there would count every mutant it covers as killed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, file, the line's text, its mutation, the tests that should kill it)
MUTANTS = [
    ("exact GELU instead of tanh's", "tf_gpt2/layers.py",
     '"gelu_tanh": lambda x: ops.gelu(x, approximate=True)', '"gelu_tanh": lambda x: ops.gelu(x, approximate=False)',
     ["tests/test_checkpoints.py"]),
    ("LayerNorm epsilon / 10", "tf_gpt2/layers.py",
     'keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="ln_1"',
     'keras.layers.LayerNormalization(epsilon=layer_norm_epsilon / 10, name="ln_1"', ["tests/test_checkpoints.py"]),
    ("attention scale 1/d instead of 1/sqrt(d) (fused path)", "tf_gpt2/layers.py",
     "mask=visible, scale=1 / math.sqrt(self.head_dim),", "mask=visible, scale=1 / self.head_dim,",
     ["tests/test_checkpoints.py"]),
    ("attention scale 1/d instead of 1/sqrt(d) (cached path)", "tf_gpt2/layers.py",
     '"float32") / math.sqrt(self.head_dim)', '"float32") / self.head_dim', ["tests/test_generation.py"]),
    ("causal mask lets a query see the next key", "tf_gpt2/layers.py",
     "mask = (key_pos <= query_pos)[None, None]", "mask = (key_pos <= query_pos + 1)[None, None]",
     ["tests/test_layers.py"]),
    ("temperature multiplies instead of divides", "tf_gpt2/generation.py",
     "scaled = (logits - ops.max(logits, axis=-1, keepdims=True)) / temperature",
     "scaled = (logits - ops.max(logits, axis=-1, keepdims=True)) * temperature", ["tests/test_generation.py"]),
    ("top-p drops the token that crosses p", "tf_gpt2/generation.py",
     "(ops.cumsum(probs, axis=-1) - probs) < top_p", "ops.cumsum(probs, axis=-1) < top_p",
     ["tests/test_generation.py"]),
    ("sampling ignores the seed", "tf_gpt2/generation.py",
     'x = ops.bitwise_xor(x, ops.cast(seed, "uint32")[:, None] * ops.cast(0x9E3779B9, "uint32"))',
     'x = x + 0 * ops.cast(seed, "uint32")[:, None]', ["tests/test_generation.py"]),
    ("positions from the mask start at 1", "tf_gpt2/generation.py",
     "return ops.maximum(ops.cumsum(mask, axis=1) - 1, 0)", "return ops.cumsum(mask, axis=1)",
     ["tests/test_generation.py"]),
    ("evaluation window scores one token too few", "tf_gpt2/evaluation.py",
     "spans.append((begin, end, end - scored_until))", "spans.append((begin, end, end - scored_until - 1))",
     ["tests/test_evaluation.py"]),
    ("the LM head keeps the padding rows of the embedding", "tf_gpt2/model.py",
     "logits = logits[..., : self.config.vocab_size]", "logits = logits", ["tests/test_checkpoints.py"]),
    ("multiworker strategy replaced by the default one", "tf_gpt2/devices.py",
     "strategy = tf.distribute.MultiWorkerMirroredStrategy()", "strategy = tf.distribute.get_strategy()",
     ["tests/test_distributed.py"]),
    ("a write goes straight to its path", "tf_gpt2/files.py",
     "staged[path] = tmp = os.path.join(staging, os.path.basename(path))", "staged[path] = tmp = path",
     ["tests/test_files.py"]),
    ("served prompt rotated the wrong way", "tf_gpt2/export.py",
     "index = tf.math.floormod(tf.range(width)[None, :] - shift[:, None], width)",
     "index = tf.math.floormod(tf.range(width)[None, :] + shift[:, None], width)",
     ["tests/test_tf_serving.py"]),
    ("an answer's length counts one token past its stop", "tf_gpt2/generation.py",
     "ops.argmax(ops.cast(stops, \"int32\"), axis=1) + 1", "ops.argmax(ops.cast(stops, \"int32\"), axis=1) + 2",
     ["tests/test_generation.py", "tests/test_tf_serving.py"]),
    ("on-device write allowed one slot past the end", "tf_gpt2/litert.py",
     "input_pos[0] >= 0, input_pos[0] + time <= length])", "input_pos[0] >= 0, input_pos[0] + time <= length + 1])",
     ["tests/test_litert.py"]),
    ("on-device ids not checked", "tf_gpt2/litert.py",
     "tf.reduce_all((tokens >= 0) & (tokens < cfg.vocab_size)),", "tf.reduce_all(tokens >= 0),",
     ["tests/test_litert.py"]),
    ("shard ids not checked when read", "tf_gpt2/data.py",
     "self._check_ids(int(piece.max()), self.files[part])", "pass", ["tests/test_data.py"]),
    ("a split run's weights not gathered from the other process", "tf_gpt2/devices.py",
     "return isinstance(value, jax.Array) and not value.is_fully_addressable", "return False",
     ["tests/test_train_jax.py"]),
    ("repetition penalty raises the logits of seen tokens", "tf_gpt2/generation.py",
     "ops.where(logits > 0, logits / penalty, logits * penalty)",
     "ops.where(logits > 0, logits * penalty, logits / penalty)", ["tests/test_generation.py"]),
    ("a resumed run skips one batch", "tf_gpt2/training.py",
     "start_step=start * cfg.grad_accum)", "start_step=(start + 1) * cfg.grad_accum)", ["tests/test_training.py"]),
    ("weight decay on biases and LayerNorms too", "tf_gpt2/training.py",
     "if len(v.shape) < 2])", "if len(v.shape) < 1])", ["tests/test_training.py"]),
    ("saving over a sharded checkpoint keeps its shards", "tf_gpt2/checkpoints.py",
     "    for name in stale:\n", "    for name in []:\n", ["tests/test_checkpoints.py"]),
    ("the served text keeps <|endoftext|>", "tf_gpt2/export.py",
     "kept = answer[\"length\"] - tf.cast(ends_with_stop & (answer[\"length\"] > 0), tf.int32)",
     "kept = answer[\"length\"]",
     ["tests/test_tf_serving.py"]),
]


def copy_tree(copy: str) -> None:
    """The checkout's files (tracked, and new ones git does not ignore) into `copy`: what the tests read, docs too."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode("utf-8").split("\0")
    for name in filter(None, listed):
        if os.path.isfile(os.path.join(ROOT, name)):  # (a tracked file deleted in the work tree is not there)
            os.makedirs(os.path.dirname(os.path.join(copy, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(copy, name))


def run_tests(copy: str, tests: list[str], python: str) -> tuple[int, float, str]:
    """pytest over `tests` in `copy`, stopping at the first failure: (exit status, seconds, the output's end)."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": copy}  # the copy's package, not the installed one
    run = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=copy, env=env,
                         capture_output=True, text=True)
    return run.returncode, time.perf_counter() - started, (run.stdout + run.stderr)[-1500:]


def run_mutant(name: str, path: str, line: str, mutation: str, tests: list[str], python: str) -> tuple[bool, float]:
    """Apply one mutant to a copy of the tree and run its tests there: (killed, seconds). Killed means a test
    failed (pytest's status 1); any other failure (a usage error, no tests, a crash) is no verdict, and raised."""
    with tempfile.TemporaryDirectory(prefix="tf_gpt2-mutant-") as copy:
        copy_tree(copy)
        target = os.path.join(copy, path)
        text = open(target, encoding="utf-8").read()
        if text.count(line) != 1:
            raise ValueError(f"mutant {name!r}: {line!r} occurs {text.count(line)} times in {path}")
        with open(target, "w", encoding="utf-8") as f:
            f.write(text.replace(line, mutation))
        status, seconds, output = run_tests(copy, tests, python)
    if status not in (0, 1):
        raise RuntimeError(f"mutant {name!r}: pytest ended with status {status}, which says nothing of the mutant:\n"
                           f"{output}")
    return status == 1, seconds


def check_unmutated(tests: list[str], python: str) -> None:
    """The tests pass on an unmutated copy: else every mutant they cover would count as killed."""
    with tempfile.TemporaryDirectory(prefix="tf_gpt2-unmutated-") as copy:
        copy_tree(copy)
        status, _, output = run_tests(copy, tests, python)
    if status != 0:
        raise RuntimeError(f"{' '.join(tests)} fail without a mutant (pytest status {status}): its kills would mean "
                           f"nothing; mend that first:\n{output}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the mutants whose name contains this text")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or args.only in m[0]]
    for tests in dict.fromkeys(tuple(m[4]) for m in chosen):  # each list of tests once, in order
        check_unmutated(list(tests), sys.executable)
    killed = 0
    for name, path, line, mutation, tests in chosen:
        dead, seconds = run_mutant(name, path, line, mutation, tests, sys.executable)
        killed += dead
        print(f"{'killed  ' if dead else 'SURVIVED'} {name}  ({path}; {' '.join(tests)}; {seconds:.0f} s)", flush=True)
    print(f"\n{killed} of {len(chosen)} mutants killed ({killed / max(len(chosen), 1):.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
