"""Every docstring example in the package runs (issue 20): examples that need a model, a task or a
GPU the reader builds are marked ``# doctest: +SKIP``; the rest are executed here and must print
what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import tl_submodels as tls

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(tls.__path__, prefix="tl_submodels.")
    if not m.name.startswith("tl_submodels.cli")  # the CLI modules' examples are shell commands
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, extraglobs={"tls": tls, "torch": torch}, optionflags=flags, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see above)"
