import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in test logs


@pytest.fixture(autouse=True)
def _never_download(monkeypatch):
    """Tests run offline by design: any attempt to fetch pretrained weights fails at once (and the
    code under test then takes its documented fallback) instead of reaching for the network."""
    def refuse(url, *args, **kwargs):
        raise OSError(f"tests do not download ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny networks: one thread is faster than two and does not fight other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


@pytest.fixture
def offline_weights(monkeypatch, tmp_path):
    """No network and an empty torchvision cache: pretrained weights cannot be had."""
    from adcourse import backbones

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(backbones, "_WARNED", set())  # each test sees its own first warning
    return tmp_path
