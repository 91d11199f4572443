"""Shared test setup: one torch thread (what workers use, and deterministic), models captured once."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)
    yield
