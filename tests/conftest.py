"""Hypothesis profiles: ``dev`` (default, random) and ``ci`` (derandomized), chosen by the
``HYPOTHESIS_PROFILE`` environment variable."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from fprune._tuning import tuned

_COMMON = dict(
    deadline=None,  # first calls into torch kernels are slow; time is not a property here
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", max_examples=60, **_COMMON)
settings.register_profile("ci", max_examples=200, derandomize=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch threads share the cores with the others."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture
def math_only():
    """Run the math modules' own code: the eager accelerator off (``tuned(eager=False)``).
    The tests of fprune.selection and fprune.nm use it; tests/test_eager.py proves the
    accelerator equal to the same references."""
    with tuned(eager=False):
        yield


@pytest.fixture(autouse=True)
def _reset_dynamo():
    """Each test compiles from scratch and leaves no compiled state behind."""
    yield
    torch._dynamo.reset()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
