"""Suite-wide settings: tiny tensors run much faster on one intra-op thread than on several on a shared
CPU."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS thread: the evaluator's 2048-d eigendecompositions slow down many-fold when OpenBLAS threads
    spin-wait on shared cores; on idle cores this costs about a second per Frechet distance."""
    # threadpoolctl is optional (not in the requirements): without it the BLAS keeps its threads
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
