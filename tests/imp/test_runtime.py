import pytest
import torch

from imp.base.errors import UserError
from imp.base.runtime import available_cores, choose_device, set_threads


def test_threads():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(0) == available_cores()
        with pytest.raises(UserError):
            set_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_devices():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device"):
        choose_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            choose_device("cuda")
