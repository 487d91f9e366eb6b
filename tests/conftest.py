import os
from pathlib import Path

import pytest
import torch

from atomdd.data import load_dataset

# The tests' thread count is fixed, in process and in the commands they start: the CLI would
# otherwise fit its threads to the load it sees (hardware.threads_fitted_to_load), and a run
# compared bitwise with another must sum in the same order.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


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


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder of real datasets for the tests that need them: $ATOMDD_TEST_DATA, else
    ../shared/data beside the repository (CI has it). The tests that use it skip when it is absent."""
    env = os.environ.get("ATOMDD_TEST_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_mnist(data_root: Path) -> Path:
    """The data root, holding the genuine MNIST files (MNIST/raw/); skips the test without them."""
    if not (data_root / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found under {data_root} (set ATOMDD_TEST_DATA)")
    return data_root


@pytest.fixture(scope="session")
def digits_pool(tmp_path_factory) -> Path:
    """A small pool of trained networks on digits (2 ConvNets of width 16 × 3 epochs, snapshots at
    epochs 2 and 3), the backbone the tests' fast runs use; without ZCA, as digits' preset."""
    from atomdd.pool import build
    from atomdd.settings import PoolSettings

    settings = PoolSettings("digits", "convnet(width=16)", members=2, epochs=3, snapshot_every=2)
    return build(settings, tmp_path_factory.mktemp("pool") / "digits")[0]
