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
