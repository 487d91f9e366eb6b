import pytest
import torch

from atomdd.data import load_dataset


@pytest.fixture(scope="module")
def one_thread():
    """Tiny batches gain nothing from a second thread, and lose a lot when another process is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")
