"""Fast checks (no launch) of the scaling helpers: threads per rank from the launcher's local size."""

from __future__ import annotations

import pytest
import torch

from mage_fast.train import dist


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({"LOCAL_SIZE": "4", "WORLD_SIZE": "16"}, (4, "LOCAL_SIZE")),  # deepspeed's launcher
        ({"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "8"}, (2, "LOCAL_WORLD_SIZE")),  # torchrun
        ({"OMPI_COMM_WORLD_LOCAL_SIZE": "3", "WORLD_SIZE": "6"}, (3, "OMPI_COMM_WORLD_LOCAL_SIZE")),
        ({"LOCAL_SIZE": "", "LOCAL_WORLD_SIZE": "5"}, (5, "LOCAL_WORLD_SIZE")),
    ],
)
def test_local_world_size_comes_from_the_launcher_never_the_global_world(env, want):
    assert dist.local_world_size(env) == want


def test_local_world_size_fallback_ignores_world_size():
    n, source = dist.local_world_size({"WORLD_SIZE": "64", "RANK": "9"})
    assert n == (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    assert "WORLD_SIZE" not in source


def test_set_threads_divides_usable_cores_by_local_ranks(monkeypatch, capsys):
    monkeypatch.setattr(dist, "usable_cores", lambda: 16)
    for var in dist.LOCAL_SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "32")  # 8 nodes x 4 ranks
    monkeypatch.setenv("LOCAL_SIZE", "4")
    before = torch.get_num_threads()
    try:
        assert dist.set_threads(0) == 4 and torch.get_num_threads() == 4
        assert "16 cores / 4 local ranks from LOCAL_SIZE" in capsys.readouterr().out
        assert dist.set_threads(3) == 3 and torch.get_num_threads() == 3  # the config wins
    finally:
        torch.set_num_threads(before)
