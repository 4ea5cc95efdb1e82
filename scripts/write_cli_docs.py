"""Write docs/cli.md from the `tf-gpt2` parser itself: `python scripts/write_cli_docs.py`.

tests/test_docs.py fails when the page is not what this writes, so the page never drifts from the command.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "cli.md")
WIDTH = 110  # columns of the help text, fixed so the page does not depend on the terminal that wrote it

INTRO = """# Command line

`pip install -e .` puts `tf-gpt2` on the path. Every command prints one line naming the problem and the file when
it fails (`TF_GPT2_TRACEBACK=1` adds the traceback). A model is given with `--model`: a Hugging Face name
(downloaded once through `huggingface_hub`, then read from its cache), a keras-hub preset name (downloaded once from
Kaggle through keras-hub), a Hugging Face, OpenAI or keras-hub directory, or a `.keras` file.

Exit status: 0 when the command did its work; 1, quietly, when the reader of its output closed it (`| head`); 2
when it failed (that one line) or a flag was wrong (argparse's usage line); 130 on Ctrl-C, after
`tf-gpt2 COMMAND: interrupted` (an interrupted `train` resumes from its last checkpoint when rerun).

This page is the commands' own `--help`, written by `python scripts/write_cli_docs.py`.
"""


def markdown() -> str:
    """The page: the top-level help, then each command's."""
    os.environ["COLUMNS"] = str(WIDTH + 2)  # argparse wraps at the terminal's width minus 2
    if ROOT not in sys.path:  # this checkout's command, not another one installed in the environment
        sys.path.insert(0, ROOT)
    from tf_gpt2.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [INTRO, "```text", parser.format_help().rstrip(), "```", ""]
    for name, command in commands.choices.items():
        parts += [f"## tf-gpt2 {name}", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    page = markdown()  # (made before the file is opened: a failed import emptied the page)
    from tf_gpt2.files import atomic_write, bytes_writer

    atomic_write(PAGE, bytes_writer(page.encode("utf-8")))
