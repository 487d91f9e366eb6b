"""The entry point's choices about the CPU: threads fitted to the cores other processes leave."""

from __future__ import annotations

import os

import pytest
import torch

from atomdd import hardware


def test_threads_beside_other_work_are_the_cores_left_at_least_one() -> None:
    assert hardware.threads_beside(others=0, cores=2, threads=2) == 2
    assert hardware.threads_beside(others=1, cores=2, threads=2) == 1
    assert hardware.threads_beside(others=5, cores=2, threads=2) == 1
    assert hardware.threads_beside(others=1, cores=8, threads=4) == 4  # never more than asked


def test_other_runnable_reads_the_running_count_less_this_process(tmp_path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.95 2.11 2.09 3/112 6957\n")
    assert hardware.other_runnable(reads=2, gap_s=0, source=str(loadavg)) == 2
    loadavg.write_text("garbage\n")
    assert hardware.other_runnable(reads=1, source=str(loadavg)) is None
    assert hardware.other_runnable(reads=1, source=str(tmp_path / "none")) is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to take one away")
def test_a_command_runs_on_the_cores_left_and_gives_them_back(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "other_runnable", lambda: 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    said: list[str] = []
    try:
        with hardware.threads_fitted_to_load(said.append):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2 and "1 other task(s)" in said[0] and "OMP_NUM_THREADS" in said[0]
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user chose: left alone, nothing said
        with hardware.threads_fitted_to_load(said.append):
            assert torch.get_num_threads() == 2
        assert len(said) == 1
    finally:
        torch.set_num_threads(before)
