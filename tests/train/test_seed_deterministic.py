"""`deterministic: true` on CUDA: cuBLAS refuses deterministic algorithms unless its workspace
config is set before the first handle, so seed_everything sets it (and keeps a user's value)."""

import os

import pytest
import torch

from mage_fast.train.progress import seed_everything


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_deterministic_sets_cublas_workspace(monkeypatch, restore_determinism):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seed_everything(0, 0, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()


def test_users_workspace_kept_and_off_leaves_it_unset(monkeypatch, restore_determinism):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    seed_everything(0, 0, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    torch.use_deterministic_algorithms(False)
    seed_everything(0, 0, deterministic=False)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
