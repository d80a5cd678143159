"""Suite-wide settings: tiny tensors run much faster on one intra-op thread than on several on a shared CPU."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
