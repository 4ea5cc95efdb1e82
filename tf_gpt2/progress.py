"""Keras' progress bars where they can be redrawn: in a terminal or a notebook. Keras takes any POSIX output for a
terminal, so a bar sent to a file or a pipe (a CI log, `| tee`) filled it with backspaces and colour codes, each
update run into the next; there, training prints a line per round (Keras' `verbose=2`, which its docs advise when
logging to a file) and `prepare` and `eval` print their results without a bar.

>>> from tf_gpt2.progress import progress_bar
>>> progress_bar(10, unit_name="window") is None  # standard output here is no terminal
True
"""

from __future__ import annotations

import os
import sys


def redrawn() -> bool:
    """Whether standard output redraws a bar: a terminal, a Jupyter kernel's output (Colab's too), or PyCharm's run
    console (as Keras takes it)."""
    isatty = getattr(sys.stdout, "isatty", None)
    return (bool(isatty and isatty()) or type(sys.stdout).__module__.startswith("ipykernel")
            or "PYCHARM_HOSTED" in os.environ)


def progress_bar(total: int, unit_name: str):
    """Keras' `Progbar` over `total` units where it can be redrawn (`redrawn`), else None."""
    if not redrawn():
        return None
    import keras

    return keras.utils.Progbar(total, unit_name=unit_name)


def round_verbosity(verbose):
    """`model.fit`'s verbosity for a run's progress: a bar (1) only where it can be redrawn, else a line per round."""
    return 2 if verbose in (1, "auto") and not redrawn() else verbose
