import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from adcourse.losses import gaussian_window, ssim_loss, ssim_map


def test_gaussian_window():
    w = gaussian_window(11, 1.5)
    assert w.shape == (11, 11)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    assert w[5, 5] == w.max() and torch.equal(w, w.T)


def test_ssim_map_matches_torchmetrics():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 40, 36, generator=g)
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    value, full = structural_similarity_index_measure(y, x, data_range=1.0, return_full_image=True)
    ours = ssim_map(y, x)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.mean(), value, atol=1e-5, rtol=1e-4)


def test_ssim_loss_properties():
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    assert abs(ssim_loss(x, x).item()) < 1e-6
    assert ssim_loss(x, 1 - x) > ssim_loss(x, (x + 0.05).clamp(0, 1))
    x.requires_grad_(True)
    ssim_loss(x, torch.zeros_like(x)).backward()
    assert torch.isfinite(x.grad).all()


def test_mixture_nll_matches_torch_distributions():
    from torch import distributions as D

    from adcourse.losses import mixture_nll

    g = torch.Generator().manual_seed(0)
    x, logits = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g)
    means, scales = torch.randn(5, 4, 3, generator=g), torch.rand(5, 4, 3, generator=g) + 0.2
    reference = D.MixtureSameFamily(D.Categorical(logits=logits), D.Independent(D.Normal(means, scales), 1))
    torch.testing.assert_close(mixture_nll(x, logits, means, scales), -reference.log_prob(x))
