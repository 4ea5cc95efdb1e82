"""The examples in the package's docstrings run and show what they say."""

import doctest
import importlib
import pkgutil

import pytest

import tf_gpt2

MODULES = sorted(m.name for m in pkgutil.iter_modules(tf_gpt2.__path__, "tf_gpt2."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"


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
