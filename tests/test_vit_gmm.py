"""VT-ADL (chapter 9): attention, patch embedding, the mixture NLL, heat maps, noise, the detector."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adcourse.data import InMemoryAnomalyDataset, TextureDefects
from adcourse.detectors import available, create
from adcourse.losses import mixture_nll
from adcourse.models.vit_gmm import (ConvDecoder, MixtureDensityNetwork, MultiHeadSelfAttention, PatchEmbed,
                                     TransformerBlock, ViTEncoder, VTADL, VTADLDetector, attention, decoder_plan,
                                     patchify, refit_mixture, weighted_component_nll)


# ---------------------------------------------------------------- attention and tokens

@pytest.mark.parametrize("shape", [(2, 5, 8), (3, 4, 16, 4), (1, 2, 64, 32)])
def test_attention_matches_pytorch(shape):
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape) for _ in range(3))
    out, weights = attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(weights.sum(-1), torch.ones(shape[:-1]))
    assert weights.shape == (*shape[:-1], shape[-2])


def test_multi_head_attention_matches_torch_module():
    torch.manual_seed(0)
    ours = MultiHeadSelfAttention(dim=32, heads=4)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(3, 10, 32)
    y, w = ours(x, return_attention=True)
    y_ref, w_ref = ref(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)


def test_patch_embedding_is_a_strided_convolution():
    torch.manual_seed(0)
    embed = PatchEmbed(image_size=32, patch_size=8, in_channels=3, dim=16)
    conv = torch.nn.Conv2d(3, 16, 8, stride=8)
    with torch.no_grad():
        conv.weight.copy_(embed.proj.weight.reshape(16, 3, 8, 8))
        conv.bias.copy_(embed.proj.bias)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(embed(x), conv(x).flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    # patches are read row by row: patch 1 is the top row, second column
    torch.testing.assert_close(patchify(x, 8)[:, 1], x[:, :, :8, 8:16].reshape(2, -1))


def test_patch_sizes_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        PatchEmbed(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(dim=30, heads=4)


def test_encoder_shapes_and_attention_maps():
    torch.manual_seed(0)
    encoder = ViTEncoder(image_size=32, patch_size=8, in_channels=1, dim=32, depth=3, heads=4, mlp_dim=64)
    tokens, maps = encoder(torch.rand(2, 1, 32, 32), return_attention=True)
    assert tokens.shape == (2, 16, 32)
    assert len(maps) == 3 and maps[0].shape == (2, 4, 16, 16)
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones(2, 4, 16))


def test_pre_ln_block_is_a_residual_update():
    torch.manual_seed(0)
    block = TransformerBlock(dim=16, heads=2, mlp_dim=32)
    with torch.no_grad():  # zero the last layers of both branches: the block becomes the identity
        for layer in (block.attn.out, block.mlp[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(block(x), x)


# ---------------------------------------------------------------- the mixture

def _random_mixture(shape=(3, 5), k=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, d, generator=g)
    logits = torch.randn(*shape, k, generator=g)
    means = torch.randn(*shape, k, d, generator=g)
    scales = torch.rand(*shape, k, d, generator=g) + 0.3
    return x, logits, means, scales


def test_mixture_nll_matches_torch_distributions():
    x, logits, means, scales = _random_mixture()
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(means, scales), 1))
    torch.testing.assert_close(mixture_nll(x, logits, means, scales), -mixture.log_prob(x))


def test_mixture_nll_is_stable_far_from_every_component():
    x, logits, means, scales = _random_mixture()
    nll = mixture_nll(x + 1e3, logits, means, scales * 0.01)  # every density underflows to 0 in float32
    assert torch.isfinite(nll).all() and (nll > 1e6).all()


def test_weighted_component_nll_is_an_upper_bound_and_equal_for_one_component():
    x, logits, means, scales = _random_mixture()
    assert (weighted_component_nll(x, logits, means, scales) >= mixture_nll(x, logits, means, scales) - 1e-5).all()
    x1, l1, m1, s1 = _random_mixture(k=1)
    torch.testing.assert_close(weighted_component_nll(x1, l1, m1, s1), mixture_nll(x1, l1, m1, s1))


@pytest.mark.parametrize("condition", ["position", "none", "vector"])
def test_mdn_nll_matches_its_distribution(condition):
    torch.manual_seed(0)
    mdn = MixtureDensityNetwork(dim=8, n_components=5, n_positions=6, condition=condition, hidden=16)
    x = torch.randn(2, 6, 8)
    logits, means, scales = mdn(x)
    assert logits.shape == (2, 6, 5) and means.shape == scales.shape == (2, 6, 5, 8)
    assert (scales > 0).all()
    torch.testing.assert_close(torch.softmax(logits, -1).sum(-1), torch.ones(2, 6))
    torch.testing.assert_close(mdn.nll(x), -mdn.distribution(x).log_prob(x))
    if condition != "vector":  # the mixture does not depend on the vector it scores
        torch.testing.assert_close(mdn(torch.zeros_like(x))[1], means)


@pytest.mark.parametrize("condition", ["position", "none"])
def test_fast_nll_matches_the_generic_formula(condition):
    torch.manual_seed(0)
    mdn = MixtureDensityNetwork(dim=8, n_components=4, n_positions=6, condition=condition, hidden=16)
    x = torch.randn(3, 6, 8)
    params = mdn(x)
    torch.testing.assert_close(mdn.nll(x), mixture_nll(x, *params), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(mdn.nll(x, "weighted_components"), weighted_component_nll(x, *params),
                               atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="loss"):
        mdn.nll(x, "sum")


def test_inference_cache_follows_weight_changes():
    torch.manual_seed(0)
    mdn = MixtureDensityNetwork(dim=4, n_components=3, n_positions=5, condition="position", hidden=8).eval()
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        first = mdn.nll(x)
        torch.testing.assert_close(mdn.nll(x), first)  # served from the cache
        mdn.mean_head.bias.add_(1.0)  # an in-place change, as an optimiser step makes
        assert not torch.allclose(mdn.nll(x), first)
    torch.testing.assert_close(mdn.nll(x).detach(), mdn.nll(x).detach())


def test_mdn_init_from_data_puts_means_on_data():
    torch.manual_seed(0)
    mdn = MixtureDensityNetwork(dim=4, n_components=3, n_positions=5, condition="position", hidden=8)
    data = torch.randn(10, 5, 4) * 2 + 7
    mdn.init_from_data(data, torch.Generator().manual_seed(0))
    means = mdn(data[:1])[1][0, 0]  # K×D at position 0
    flat = data.reshape(-1, 4)
    nearest = torch.cdist(means, flat).min(1).values
    assert (nearest < 0.5).all()


# ---------------------------------------------------------------- the model

@pytest.mark.parametrize("image_size,patch_size,channels", [(32, 4, 1), (32, 8, 3), (48, 16, 1), (64, 8, 1), (64, 16, 3)])
def test_heatmap_has_the_image_size(image_size, patch_size, channels):
    torch.manual_seed(0)
    model = VTADL(image_size, patch_size, channels, dim=16, depth=1, heads=2, mlp_dim=32, recon_dim=32,
                  n_components=3, mdn_hidden=16, decoder_width=4).eval()
    x = torch.rand(2, channels, image_size, image_size)
    out = model(x)
    grid = image_size // patch_size
    assert out["nll"].shape == (2, grid * grid)
    assert out["reconstruction"].shape == x.shape
    heat = model.heatmap(out["nll"])
    assert heat.shape == (2, image_size, image_size)
    # bilinear up-sampling keeps the patch scores' range
    assert heat.min() >= out["nll"].min() - 1e-4 and heat.max() <= out["nll"].max() + 1e-4


def test_decoder_plan_and_output_range():
    assert decoder_plan(64) == (4, 4) and decoder_plan(512) == (4, 7)
    assert decoder_plan(48) == (6, 3) and decoder_plan(28) == (7, 2)
    n_transposed = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in ConvDecoder(32, 1, 64).modules())
    assert n_transposed == 5  # as in the thesis
    torch.manual_seed(0)
    out = ConvDecoder(32, 1, 32, width=4, output="tanh")(torch.randn(3, 32) * 10)
    assert out.shape == (3, 1, 32, 32) and out.min() >= -1 and out.max() <= 1 and out.min() < 0


def test_noise_only_in_training():
    torch.manual_seed(0)
    model = VTADL(32, 8, 1, dim=64, depth=1, heads=2, mlp_dim=32, recon_dim=16, n_components=2,
                  mdn_hidden=8, decoder_width=4, noise_std=0.2)
    tokens = torch.zeros(4, 16, 64)
    model.train()
    noisy = model.add_noise(tokens)
    assert abs(noisy.std().item() - 0.2) < 0.01 and abs(noisy.mean().item()) < 0.01
    model.eval()
    assert torch.equal(model.add_noise(tokens), tokens)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["nll"], model(x)["nll"])  # eval: deterministic
        model.mdn.train()
        model.train()
        for m in model.modules():  # keep batch norm's statistics out of the comparison
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        a, b = model(x)["nll"], model(x)["nll"]
        assert not torch.allclose(a, b)  # training: the scored vectors are perturbed
        model.noise_std = 0.0
        torch.testing.assert_close(model(x)["nll"], model(x)["nll"])


def test_encoder_input_standardisation():
    torch.manual_seed(0)
    encoder = ViTEncoder(image_size=16, patch_size=4, in_channels=3, dim=8, depth=1, heads=2, mlp_dim=16)
    images = torch.rand(10, 3, 16, 16) * 0.2 + 0.4
    before = encoder(images)
    encoder.set_input_statistics(images)
    torch.testing.assert_close(encoder.input_mean.flatten(), images.mean((0, 2, 3)))
    shifted = ViTEncoder(image_size=16, patch_size=4, in_channels=3, dim=8, depth=1, heads=2, mlp_dim=16)
    shifted.load_state_dict(encoder.state_dict())  # the statistics travel with the weights
    torch.testing.assert_close(shifted(images), encoder(images))
    assert not torch.allclose(before, encoder(images))


def test_refit_mixture_fits_the_final_features():
    torch.manual_seed(0)
    model = VTADL(32, 8, 1, dim=16, depth=1, heads=2, mlp_dim=32, recon_dim=16, n_components=3,
                  mdn_hidden=16, decoder_width=4)
    images = torch.rand(16, 1, 32, 32)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    losses = refit_mixture(model, images, steps=60, lr=2e-2, batch_size=8)
    assert len(losses) == 60 and np.mean(losses[-10:]) < np.mean(losses[:10])
    for key, value in model.encoder.state_dict().items():  # only the mixture was trained
        torch.testing.assert_close(value, encoder_before[key])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="condition"):
        MixtureDensityNetwork(condition="pixels")
    with pytest.raises(ValueError, match="mdn_loss"):
        VTADL(mdn_loss="sum")
    with pytest.raises(TypeError, match="unknown vtadl setting 'heads_count'; did you mean 'heads'"):
        VTADLDetector(epochs=1, heads_count=3)


# ---------------------------------------------------------------- the detector

TINY = dict(epochs=1, batch_size=8, dim=16, depth=1, heads=2, mlp_dim=32, recon_dim=16, n_components=3,
            mdn_hidden=16, decoder_width=4, refit_steps=3)


def test_vtadl_is_registered_and_fits_textures():
    assert "vtadl" in available()
    torch.manual_seed(0)
    train = TextureDefects("brick", "train", n=16)
    test = TextureDefects("brick", "test", n=8)
    detector = create("vtadl", device="cpu", **TINY).fit(train, "quick")
    scores, maps = detector.predict(test.images)
    assert scores.shape == (8,) and maps.shape == (8, 64, 64)
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    assert detector.network.grid == 8  # patch_size=None: an 8×8 grid
    assert len(detector.history) == 1 and math.isfinite(detector.history[0])


def test_vtadl_fits_colour_images_and_the_code_variant():
    torch.manual_seed(0)
    images = torch.rand(8, 3, 32, 32)
    data = InMemoryAnomalyDataset(images, np.zeros(8, dtype=int))
    detector = VTADLDetector(device="cpu", **{**TINY, "patch_size": 8, "mdn_loss": "weighted_components",
                                              "condition": "vector", "noise_std": 0.0}).fit(data)
    scores, maps = detector.predict(images[:3])
    assert scores.shape == (3,) and maps.shape == (3, 32, 32)
    assert detector.network.grid == 4


@pytest.mark.parametrize("bad, match", [(dict(dim=30, heads=4), r"dim=30 is not divisible by heads=4"),
                                        (dict(epochs=-1), r"epochs=-1 .*at least 0"),
                                        (dict(patch_size=0), r"patch_size=0")])
def test_out_of_range_vtadl_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        VTADLDetector.Settings(**bad)


def test_an_untrained_encoder_is_a_valid_control():
    # epochs=0 (chapter 9's control): the mixture is still fitted on the untrained encoder's features
    torch.manual_seed(0)
    train = TextureDefects("brick", "train", n=8)
    detector = create("vtadl", device="cpu", **{**TINY, "epochs": 0}).fit(train)
    assert detector.history == [] and len(detector.refit_history) == TINY["refit_steps"]
    assert np.isfinite(detector.predict(train.images[:2])[0]).all()
