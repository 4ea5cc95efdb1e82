"""The `tf-gpt2` console script. It parses the command line before the package's `__init__` runs, so
`tf-gpt2 --help` and a mistyped flag answer at once, without loading TensorFlow.

`import tf_gpt2` loads the model (that registers its Keras classes for `keras.models.load_model`), and
any `tf_gpt2.<module>` import runs it first. Here the import is taken in Python's own two steps with the
parsing between them: the package module is made from its spec (its submodules can be imported, its
`__init__` has not run), `tf_gpt2.cli` builds the parser from modules that import no TensorFlow, and
then the package's `__init__` runs and the command with it; a command that reads no model (`prepare`) runs
without it, so without Keras and TensorFlow, where it draws no progress bar (its output a file or a pipe).

TensorFlow's C++ start-up lines ("cudart_stub.cc:31] Could not find cuda drivers", "cuInit" ...) are
written before its logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot stop them; the launcher drops
those lines while TensorFlow loads and finds its devices, and writes out anything else that came.
TF_CPP_MIN_LOG_LEVEL=0 (show all) leaves them alone; any other value keeps them dropped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile
from typing import Iterator, Sequence

# absl's line format ("I0000 00:00:1796118916.739730   11498 cudart_stub.cc:31] ..."), its notice that
# logging is not set up yet, and the continuation line of TensorFlow's CPU-feature notice.
START_UP_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] |WARNING: All log messages before "
                           r"absl::InitializeLog\(\)|To enable the following instructions: ")


@contextlib.contextmanager
def tensorflow_start_up_lines_dropped() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file for the block; then write out what came, but for the
    start-up lines of TensorFlow's C++ runtime (all of it if the block raised)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if failed or not START_UP_LINE.match(line)))
            sys.stderr.flush()


def _load(package, spec, quiet: bool) -> None:
    """Run the package's `__init__` (TensorFlow loads) and let TensorFlow find its devices."""
    with tensorflow_start_up_lines_dropped() if quiet else contextlib.nullcontext():
        spec.loader.exec_module(package)
        if "tensorflow" in sys.modules:
            sys.modules["tensorflow"].config.list_physical_devices()


def main(argv: Sequence[str] | None = None) -> int:
    if "tf_gpt2" in sys.modules:  # already imported (e.g. called from Python): nothing to defer
        from tf_gpt2 import cli

        return cli.main(argv)
    quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0"  # unset, or a level that asks for fewer lines
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's INFO and WARNING lines after start-up
    spec = importlib.util.find_spec("tf_gpt2")
    package = importlib.util.module_from_spec(spec)
    sys.modules["tf_gpt2"] = package
    try:
        from tf_gpt2 import cli

        args = cli.build_parser().parse_args(argv)
        from tf_gpt2.progress import redrawn

        if args.command not in cli.WITHOUT_TENSORFLOW or redrawn():  # (`prepare` reads no model; Keras draws its bar)
            _load(package, spec, quiet)
    except BaseException as e:  # --help, a parse error, a failed import, Ctrl-C: leave no half-made package behind
        for name in [name for name in sys.modules if name == "tf_gpt2" or name.startswith("tf_gpt2.")]:
            del sys.modules[name]
        if isinstance(e, KeyboardInterrupt):  # as a command's Ctrl-C is said (cli.run), also before it was parsed
            print(f"tf-gpt2 {args.command}: interrupted" if "args" in locals() else "tf-gpt2: interrupted",
                  file=sys.stderr)
            return 130
        if isinstance(e, ImportError) and "args" in locals() and not os.environ.get("TF_GPT2_TRACEBACK"):
            print(f"tf-gpt2 {args.command}: error: {e}", file=sys.stderr)  # (a backend refused, a library missing)
            return 2
        raise
    args.whole_process = argv is None  # the console script: the command is the process (see cli.run)
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
