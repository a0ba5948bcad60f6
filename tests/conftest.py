import pytest
import torch


@pytest.fixture
def one_thread():
    """Small tensors and models: one intra-op thread is faster and far less noisy on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
