"""The examples in the package's docstrings run and show what they say."""

import doctest
import importlib
import pkgutil

import pytest

import tf_gpt2

MODULES = sorted(m.name for m in pkgutil.iter_modules(tf_gpt2.__path__, "tf_gpt2."))


# Modules without a runnable example, and why; every other module must run at least one.
WITHOUT_EXAMPLES = {
    "tf_gpt2.cli": "the command line: tests/test_cli.py runs it",
    "tf_gpt2.distribute": "patches for a multi-worker cluster: tests/test_distributed.py runs two workers",
    "tf_gpt2.export": "writes a SavedModel (seconds): tests/test_tf_serving.py serves it",
    "tf_gpt2.formats": "two constants",
    "tf_gpt2.litert": "converts to LiteRT (seconds): its examples are shown, tests/test_litert.py runs them",
    "tf_gpt2.training": "trains a model: tests/test_training.py",
}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
    assert (result.attempted == 0) == (name in WITHOUT_EXAMPLES), (name, result.attempted)


def test_ci_runs_the_test_command_the_readme_gives():
    import os
    import re

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    section = readme[readme.index("Run the tests"):]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    assert "pytest" in command
    ci = [line.strip() for line in open(os.path.join(root, ".ci", "run"), encoding="utf-8")]
    assert command in ci  # the same line, verbatim
