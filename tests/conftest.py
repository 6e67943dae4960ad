"""Fixtures for every test. Shared helpers live in ``tests/testkit`` (on ``sys.path`` through pytest's
``pythonpath`` setting); test modules never import each other.

Big (registered) variants are only ever built on the meta device or at their debug size.
"""

from __future__ import annotations

import os
import random

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state (deterministic, order independent)."""
    torch.manual_seed(0)
    random.seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The data caches (music, speech, video, downloads) go to a folder of this test session, never to the user's
    ~/.cache: a test that forgets to point them elsewhere neither reads a stale cache nor leaves files behind."""
    old = os.environ.get("PERCEIVERS_CACHE")
    os.environ["PERCEIVERS_CACHE"] = str(tmp_path_factory.mktemp("perceivers-cache"))
    yield
    if old is None:
        os.environ.pop("PERCEIVERS_CACHE", None)
    else:
        os.environ["PERCEIVERS_CACHE"] = old


@pytest.fixture(scope="module")
def one_thread():
    """Use in modules whose tiny models run thousands of small ops: one intra-op thread is many times faster than
    several on a shared CPU (thread hand-offs dominate)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
