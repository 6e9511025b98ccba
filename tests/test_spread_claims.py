"""Every comparison a chapter's prose draws from trained figures holds over the committed training seeds.

Each row: the chapter, the two committed figures (keys of ``book/results/spread/<chapter>.json``), the
verdict of :func:`adcourse.spread.paired_difference` that the prose states, and the sentence of the
prose that states it (whitespace collapsed). A re-collected chapter whose verdict changed fails
here until its prose is changed with it.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

import adcourse.results
from adcourse import spread

REPO = Path(__file__).resolve().parents[1]
HIGHER, LOWER, SAME = "higher", "lower", "within the spread"

CLAIMS = [
    # chapter 2: the SSIM autoencoder against the MSE one
    ("02_autoencoders", "ae_ssim image_auroc", "ae_l2 image_auroc", LOWER,
     "localises better than the MSE one on brick and detects a little worse at the image level, both beyond "
     "the spread of five training seeds"),
    ("02_autoencoders", "ae_ssim pixel_auroc", "ae_l2 pixel_auroc", HIGHER,
     "localises better than the MSE one on brick and detects a little worse at the image level, both beyond "
     "the spread of five training seeds"),
    ("02_autoencoders", "ae_ssim aupro", "ae_l2 aupro", HIGHER,
     "in the quick one by 0.098 ± 0.018 AUPRO over five training seeds (0.734 ± 0.010 against 0.636 ± 0.022), "
     "well beyond their spread"),
    # chapter 4: SIREN inpainting against the autoencoder, the fits, the discriminator
    ("04_implicit_siren", "sliding centre image_auroc", "brick ae_l2 image_auroc", SAME, "SIREN inpainting and the autoencoder of chapter 2 do not differ beyond the spread of the seeds"),
    ("04_implicit_siren", "sliding centre image_auroc", "brick ae_l2 image_auroc", SAME, "on the same patches; the difference is within the spread of the seeds"),
    ("04_implicit_siren", "sliding centre pixel_auroc", "centre only pixel_auroc", HIGHER, "of the centre alone fall far below those of the sliding centre, on every seed and beyond the spread"),
    ("04_implicit_siren", "centre only pixel_auroc", "sliding centre pixel_auroc", LOWER, "but a pixel AUROC of only 0.650 ± 0.001, lower on every seed"),
    ("04_implicit_siren", "trained discriminator image_auroc", "untrained discriminator image_auroc", SAME, "The trained one is lower on average, but the difference is within the spread of the seeds"),
    ("04_implicit_siren", "trained discriminator image_auroc", "untrained discriminator image_auroc", SAME, "is not better than that of the same network untrained (0.860 ± 0.042): the difference is within the spread"),
    ("04_implicit_siren", "digits siren_inpaint image_auroc", "digits ae_l2 image_auroc", LOWER, "On the one-class digits SIREN inpainting is lower than the autoencoder on every seed, beyond the spread"),
    ("04_implicit_siren", "digits ae_l2 image_auroc", "digits siren_inpaint image_auroc", HIGHER, "On the one-class digits the autoencoder is better than SIREN inpainting on every seed, beyond the spread"),
    # chapter 1: the oracle's threshold against one fixed on normal validation images (PaDiM on grass)
    ("01_problem_data_metrics", "padim grass, oracle (best TPR + TNR on the test set): f1", "padim grass, normal validation, mean+3std: f1", HIGHER, "the validation threshold's 0.437 ± 0.031, lower beyond the spread of the seeds and on every seed"),
    ("01_problem_data_metrics", "padim grass, pixels, oracle (best F1 on the test set): f1", "padim grass, pixels, normal validation, mean+3std of its pixels: f1", HIGHER, "At the pixel level the gap is smaller and holds on every seed"),
    ("04_implicit_siren", "SIREN PSNR (dB)", "ReLU PSNR (dB)", HIGHER, "but it stays far above both ReLU networks on every seed, beyond the spread"),
    ("04_implicit_siren", "SIREN PSNR (dB)", "ReLU + positional encoding (L = 4) PSNR (dB)", HIGHER, "but it stays far above both ReLU networks on every seed, beyond the spread"),
    ("04_implicit_siren", "SIREN PSNR (dB)", "ReLU PSNR (dB)", HIGHER, "The SIREN's PSNR varies widely between seeds but stays far above both ReLU networks on every seed"),
    ("04_implicit_siren", "SIREN PSNR (dB)", "ReLU + positional encoding (L = 4) PSNR (dB)", HIGHER, "The SIREN's PSNR varies widely between seeds but stays far above both ReLU networks on every seed"),
    ("04_implicit_siren", "ReLU + positional encoding (L = 4) PSNR (dB)", "ReLU PSNR (dB)", HIGHER, "(23.8 ± 1.4 dB, higher than the plain ReLU network's on every seed)"),
    ("04_implicit_siren", "centre only image_auroc", "sliding centre image_auroc", SAME, "against 0.850 ± 0.014 for the sliding centre, a difference within the spread of the seeds"),
    ("04_implicit_siren", "centre only image_auroc", "sliding centre image_auroc", SAME, "gives about the same image AUROC (0.867 ± 0.007, a difference within the spread)"),
    ("04_implicit_siren", "sliding centre aupro", "centre only aupro", HIGHER, "of the centre alone fall far below those of the sliding centre, on every seed and beyond the spread"),
    ("04_implicit_siren", "trained discriminator image_auroc", "sliding centre image_auroc", LOWER, "The discriminator's score is below the residual score on every seed, beyond the spread"),
    ("04_implicit_siren", "trained discriminator image_auroc", "sliding centre image_auroc", LOWER, "It is below the residual score on every seed, beyond the spread"),
    # chapter 10: the live benchmark and the coreset sizes
    ("10_comparison", "textures:brick padim image_auroc", "textures:brick vtadl image_auroc", HIGHER, "PaDiM is higher than VT-ADL beyond the spread of the seeds, in image AUROC"),
    ("10_comparison", "textures:brick padim aupro", "textures:brick vtadl aupro", HIGHER, "image AUROC (1.000 ± 0.000 against 0.898 ± 0.010) and in AUPRO (0.846 ± 0.000 against 0.657 ± 0.029)"),
    ("10_comparison", "textures:brick vtadl image_auroc", "textures:brick ae_l2 image_auroc", SAME, "VT-ADL and the 60-epoch autoencoder do not differ beyond the spread of the seeds in image AUROC"),
    ("10_comparison", "patchcore grass, coreset 0.001: image_auroc", "patchcore grass, coreset 0.0005: image_auroc", SAME, "Over training seeds 0–4 the two banks differ by +0.009 ± 0.042, within the spread of the seeds"),
    ("10_comparison", "patchcore grass, coreset 0.0025: image_auroc", "patchcore grass, coreset 0.0005: image_auroc", HIGHER, "The 655-patch bank beats the 131-patch one beyond the spread of the seeds"),
    ("10_comparison", "patchcore grass, coreset 0.01: image_auroc", "patchcore grass, coreset 0.0025: image_auroc", HIGHER, "and the 2,621-patch bank beats the 655-patch one beyond it too"),
    ("10_comparison", "patchcore grass, coreset 0.01: image_auroc", "patchcore grass, coreset 0.005: image_auroc", SAME, "The last doubling, from 1,311 patches (0.808 ± 0.032), is within the spread of the seeds"),
    ("10_comparison", "textures:brick ae_l2 image_auroc", "textures:brick padim image_auroc", LOWER, "the 60-epoch autoencoder's 0.878 against PaDiM's 1.000 on brick in section 4 (0.897 ± 0.030 against 1.000 ± 0.000"),
    # chapter 5a: the GAN against WGAN-GP, and the section's other comparisons
    ("05a_gans_wgan", "WGAN-GP score", "GAN, non-saturating score", HIGHER, "Its score beats the non-saturating GAN's by +0.390 ± 0.252, and clipping's by +1.976 ± 0.190"),
    ("05a_gans_wgan", "WGAN-GP confidence", "GAN, non-saturating confidence", SAME, "Its confidence differs from the plain GAN's by +0.041 ± 0.040, within the spread of the seeds"),
    ("05a_gans_wgan", "WGAN-GP score", "WGAN, clipping score", HIGHER, "Its score beats the non-saturating GAN's by +0.390 ± 0.252, and clipping's by +1.976 ± 0.190"),
    ("05a_gans_wgan", "WGAN-GP score", "GAN, feature matching score", HIGHER, "It gave the highest judge score of the four generators of section 5, beyond the spread of the seeds"),
    ("05a_gans_wgan", "vanishing: non-saturating gradient ratio", "vanishing: saturating gradient ratio", HIGHER, "the saturating loss kept 0.031 ± 0.015 of its starting gradient, while the non-saturating loss's grew 5.234 ± 1.046 times"),
    ("05a_gans_wgan", "GAN, non-saturating score", "GAN, non-saturating at step 240: score", SAME, "the change from step 240 to step 400 is within the spread of the seeds"),
    ("05a_gans_wgan", "GAN, minibatch discrimination at step 240: score", "GAN, non-saturating at step 240: score", SAME, "Over training seeds 0–4 the minibatch layer changes the score by +0.070 ± 0.102, within the spread of the seeds"),
    ("05a_gans_wgan", "GAN, minibatch discrimination at step 240: confidence", "GAN, non-saturating at step 240: confidence", SAME, "The confidence differs by +0.011 ± 0.010, within the spread too"),
    ("05a_gans_wgan", "GAN, minibatch discrimination at step 240: score", "GAN, non-saturating at step 240: score", SAME, "against 2.683 ± 0.072 for the plain GAN at the same step, is within the spread of the seeds"),
    ("05a_gans_wgan", "GAN, feature matching score", "GAN, non-saturating score", SAME, "2.647 ± 0.127, is within the spread of the seeds of the plain GAN's after 400"),
    ("05a_gans_wgan", "median gradient norm, gradient penalty", "median gradient norm, clipping", HIGHER, "The **gradient penalty** kept the median norm at 1.049 ± 0.014, far above clipping's on every seed"),
    # chapter 5b: f-AnoGAN against FCBiGAN
    ("05b_fanogan_fcbigan", "fcbigan (max) image AUROC", "fanogan image AUROC", SAME,
     "In image AUROC the two differ by −0.027 ± 0.069, within the spread of the seeds"),
    ("05b_fanogan_fcbigan", "fcbigan (max) pixel AUROC", "fanogan pixel AUROC", SAME,
     "In pixel AUROC they differ by −0.058 ± 0.071, also within the spread"),
    ("05b_fanogan_fcbigan", "fcbigan (max) AUPRO", "fanogan AUPRO", SAME,
     "In AUPRO they differ by −0.020 ± 0.111, within the spread again"),
    ("05b_fanogan_fcbigan", "fcbigan (L_R only) pixel AUROC", "fanogan pixel AUROC", SAME,
     "FCBiGAN's $L_R$ alone and f-AnoGAN differ in pixel AUROC by +0.015 ± 0.060, within the spread too"),
    ("05b_fanogan_fcbigan", "FCBiGAN mean |x - G(E(x))|", "BiGAN mean |x - x_hat|", LOWER,
     "Its mean error there is lower than BiGAN's, beyond the spread of the seeds"),
    ("05b_fanogan_fcbigan", "mean D(x, E(x)), defect pixels", "mean D(x, E(x)), normal test pixels", HIGHER,
     "its mean output is *higher*, closer to 1, on all five training seeds"),
    ("05b_fanogan_fcbigan", "fcbigan (L_R only) pixel AUROC", "fcbigan (max) pixel AUROC", HIGHER,
     "Its reconstruction residual alone was higher in pixel AUROC and AUPRO, beyond the spread and on every seed"),
    ("05b_fanogan_fcbigan", "fcbigan (L_R only) AUPRO", "fcbigan (max) AUPRO", HIGHER,
     "Its reconstruction residual alone was higher in pixel AUROC and AUPRO, beyond the spread and on every seed"),
    ("05b_fanogan_fcbigan", "fcbigan (L_R only) image AUROC", "fcbigan (max) image AUROC", SAME,
     "in image AUROC the two are within the spread of the seeds"),
    # chapter 7: the capsule score against the standard decision
    ("07_capsules", "mean over classes, 1% anomalies: AS, calibrated", "mean over classes, 1% anomalies: standard", HIGHER,
     "That is higher than the standard decision by +0.349 ± 0.022, beyond the spread of the seeds"),
    ("07_capsules", "mean over classes, 10% anomalies: AS, calibrated", "mean over classes, 10% anomalies: standard",
     HIGHER, "against 0.928 ± 0.008 for $AS$: higher by +0.233 ± 0.060, beyond the spread of the seeds"),
    # chapter 9: VT-ADL against the autoencoder, the mixture's variants and ablations
    ("09_vit_gmm", "VT-ADL image_auroc", "AE (MSE) image_auroc", SAME,"In image AUROC VT-ADL and the autoencoder differ by +0.001 ± 0.040, within the spread of the seeds"),
    ("09_vit_gmm", "VT-ADL pixel_auroc", "AE (MSE) pixel_auroc", SAME,"In pixel AUROC they differ by +0.002 ± 0.014, within the spread too"),
    ("09_vit_gmm", "VT-ADL aupro", "AE (MSE) aupro", SAME,"In AUPRO they differ by +0.013 ± 0.048, within the spread again"),
    ("09_vit_gmm", "VT-ADL image AUROC of max_nll", "VT-ADL image AUROC of mse", HIGHER,"its maximum alone separates defective from normal images far better than either reconstruction term, on every training seed"),
    ("09_vit_gmm", "VT-ADL image AUROC of max_nll", "VT-ADL image AUROC of ssim", HIGHER,"its maximum alone separates defective from normal images far better than either reconstruction term, on every training seed"),
    ("09_vit_gmm", "VT-ADL image_auroc", "VT-ADL image AUROC of max_nll", SAME,"as the thesis does, leaves the image AUROC within the spread of the seeds"),
    ("09_vit_gmm", "toy mixture, no noise train NLL", "toy mixture, noise 0.2 train NLL", LOWER,"its training NLL is lower on every seed, beyond the spread"),
    ("09_vit_gmm", "toy mixture, noise 0.2 held-out NLL", "toy mixture, no noise held-out NLL", SAME,"the no-noise figures vary so much that the paired difference is within the spread of the seeds"),
    ("09_vit_gmm", "toy mixture, noise 0.2 outlier (0, 0)", "toy mixture, noise 0.2 held-out NLL", HIGHER,"With noise they get a higher NLL than the held-out ring points on every seed, beyond the spread"),
    ("09_vit_gmm", "toy mixture, noise 0.2 outlier (0.3, -0.2)", "toy mixture, noise 0.2 held-out NLL", HIGHER,"With noise they get a higher NLL than the held-out ring points on every seed, beyond the spread"),
    ("09_vit_gmm", "toy mixture, no noise outlier (0, 0)", "toy mixture, no noise held-out NLL", SAME,"Without noise that gap is within the spread"),
    ("09_vit_gmm", "toy mixture, no noise outlier (0.3, -0.2)", "toy mixture, no noise held-out NLL", SAME,"Without noise that gap is within the spread"),
    ("09_vit_gmm", "toy on the vector, noise 0.2 outlier (0, 0)", "toy on the vector, noise 0.2 held-out NLL", SAME,"at (0, 0) the gap to the held-out ring points is within the spread of the seeds"),
    ("09_vit_gmm", "toy on the vector, noise 0.2 outlier (1.8, 1.8)", "toy on the vector, noise 0.2 held-out NLL", HIGHER,"Only the far outlier stands out, beyond the spread of the seeds"),
    ("09_vit_gmm", "code's loss: weighted component NLLs, K=10 aupro", "paper: mixture NLL, K=10 aupro", LOWER,"Its AUPRO falls to about half of the mixture NLL's, lower on every seed"),
    ("09_vit_gmm", "code's loss: weighted component NLLs, K=10 image_auroc", "paper: mixture NLL, K=10 image_auroc", LOWER,"and its image AUROC is lower on every seed too (0.800 ± 0.038 against 0.919 ± 0.010)"),
    ("09_vit_gmm", "code's loss: weighted component NLLs, K=10 aupro", "Gaussians / K = 1 aupro", SAME,"the $K = 1$ row of the ablation below gives figures within the spread of the seeds of these"),
    ("09_vit_gmm", "code's loss: weighted component NLLs, K=10 image_auroc", "Gaussians / K = 1 image_auroc", SAME,"the $K = 1$ row of the ablation below gives figures within the spread of the seeds of these"),
    ("09_vit_gmm", "code's conditioning: on the vector, K=3 aupro", "paper: mixture NLL, K=10 aupro", HIGHER,"The mixture conditioned on the vector does *better* here, against the advice we followed, on every seed"),
    ("09_vit_gmm", "code's conditioning: on the vector, K=3 image_auroc", "paper: mixture NLL, K=10 image_auroc", HIGHER,"on every seed: AUPRO 0.796 ± 0.010 against 0.671 ± 0.016, image AUROC 0.973 ± 0.011 against 0.919 ± 0.010"),
    ("09_vit_gmm", "overlap per pixel at 5 % FPR", "overlap per region at 5 % FPR", HIGHER,"at 5 % FPR the overlap per pixel is higher than per region on every seed"),
    ("09_vit_gmm", "VT-ADL pixel_auroc", "overlap per pixel at 5 % FPR", HIGHER,"rates no inspector would accept — is higher still (0.935 ± 0.012)"),
    ("09_vit_gmm", "VT-ADL pixel_auroc", "VT-ADL aupro", HIGHER,"its \"PRO\" is a pixel AUROC, higher than AUPRO (0.935 ± 0.012 against 0.657 ± 0.029"),
    ("09_vit_gmm", "Gaussians / K = 3 aupro", "Gaussians / K = 1 aupro", HIGHER,"with ten and 0.722 ± 0.019 with twenty, each step higher on every seed and beyond the spread"),
    ("09_vit_gmm", "Gaussians / K = 10 aupro", "Gaussians / K = 3 aupro", HIGHER,"with ten and 0.722 ± 0.019 with twenty, each step higher on every seed and beyond the spread"),
    ("09_vit_gmm", "Gaussians / K = 20 aupro", "Gaussians / K = 10 aupro", HIGHER,"Localisation improves steeply from one to ten Gaussians per position and is still improving at twenty"),
    ("09_vit_gmm", "noise / noise off aupro", "noise / noise N(0, 0.2) aupro", SAME,"the noise makes no difference beyond the spread of the seeds (AUPRO 0.671 ± 0.016 with it"),
    ("09_vit_gmm", "noise / noise off image_auroc", "noise / noise N(0, 0.2) image_auroc", SAME,"the image AUROC without noise is higher (0.950 against 0.912), but over the seeds that difference is within the spread"),
    ("09_vit_gmm", "conditioning / one mixture for all positions aupro", "Gaussians / K = 10 aupro", SAME,"here the difference is within the spread of the seeds (AUPRO 0.678 ± 0.018 against 0.671 ± 0.016)"),
    ("09_vit_gmm", "patch size / patch 16 aupro", "patch size / patch 8 aupro", LOWER,"The AUPRO is lower on every seed, beyond the spread (0.426 ± 0.021 against 0.657 ± 0.029 with 8×8 patches)"),
    ("09_vit_gmm", "encoder / joint training (no stop-gradient) aupro", "patch size / patch 8 aupro", LOWER,"Letting the mixture's gradient into the encoder lowers the AUPRO and the image AUROC on every seed, beyond the spread"),
    ("09_vit_gmm", "encoder / joint training (no stop-gradient) image_auroc", "patch size / patch 8 image_auroc", LOWER,"Letting the mixture's gradient into the encoder lowers the AUPRO and the image AUROC on every seed, beyond the spread"),
    ("09_vit_gmm", "encoder / SSIM term, λ2 = 0.5 (thesis) aupro", "patch size / patch 8 aupro", SAME,"Its AUPRO does not differ from the quick recipe's beyond the spread of the seeds"),
    ("09_vit_gmm", "encoder / control: untrained encoder aupro", "patch size / patch 8 aupro", HIGHER,"The encoder that was never trained localises better than the trained one, on every seed and beyond the spread"),
    ("09_vit_gmm", "encoder / control: untrained encoder aupro", "VT-ADL aupro", HIGHER,"encoder localised better, on every seed (AUPRO 0.747 ± 0.025 against 0.657 ± 0.029)"),
]

def _chapter_3() -> list[tuple]:
    """Chapter 3's comparisons: corruption during training, scoring by residual, MC dropout (mcd) or
    Gaussian activations, for the AE and the AESc; each sentence of the prose covers a family of pairs."""
    chapter, residual, mcd, gaussian = "03_synthetic_corruption", "residual / ", "mcd / ", "gaussian / "
    rows = [
        (residual + "AESc / stain image AUROC", residual + "AESc / clean image AUROC", HIGHER,
         "to 0.846 ± 0.051 over training seeds 0–4, higher on every seed and beyond the spread"),
        (residual + "AESc / stain AUPRO", residual + "AESc / clean AUPRO", LOWER,
         "stains do to the residual: it gains at the image level, but its AUPRO falls beyond the spread"),
        (residual + "AESc / clean image AUROC", residual + "AE / clean image AUROC", SAME,
         "0.733 ± 0.015 clean against 0.751 ± 0.035 for the clean-trained AESc is within the spread of the seeds"),
        (mcd + "AESc / stain image AUROC", mcd + "AESc / clean image AUROC", HIGHER,
         "Training with stains raises its image AUROC and its AUPRO beyond the spread of the seeds"),
        (mcd + "AESc / stain AUPRO", mcd + "AESc / clean AUPRO", HIGHER,
         "Training with stains raises its image AUROC and its AUPRO beyond the spread of the seeds"),
        (residual + "AE / stain image AUROC", residual + "AE / clean image AUROC", SAME,
         "stain noise does not change the AE's figure beyond the spread either (0.751 ± 0.007)"),
    ]
    networks = ["AESc / clean", "AESc / stain", "AESc / gaussian", "AESc / salt_and_pepper", "AE / clean", "AE / stain"]
    rows += [(mcd + net + metric, residual + net + metric, LOWER,
              "for every network its image AUROC and AUPRO are lower than the residual's on every training seed, "
              "beyond the spread") for net in networks for metric in (" image AUROC", " AUPRO")]
    rows += [(gaussian + net + " image AUROC", residual + net + " image AUROC", LOWER,
              "below the residual of the same network on every seed") for net in networks]
    rows += [(residual + f"AESc / {noise} image AUROC", residual + "AESc / clean image AUROC", SAME,
              "Gaussian and salt-and-pepper noise did not help: they differ from clean training by less than the "
              "spread of the seeds") for noise in ("gaussian", "salt_and_pepper")]
    rows += [(residual + "AESc / stain image AUROC", residual + f"AESc / {noise} image AUROC", HIGHER,
              "from clean training beyond the spread, and stain training beats both on every seed")
             for noise in ("gaussian", "salt_and_pepper")]
    rows += [(residual + ae + " AUPRO", residual + aesc + " AUPRO", LOWER,
              "0.496 ± 0.027 with stains) is lower than that of every AESc on every seed, beyond the spread")
             for ae in ("AE / clean", "AE / stain") for aesc in networks[:4]]
    only = "Only the stain-trained AESc beats it there, on every seed and beyond the spread"
    for ae in ("AE / clean", "AE / stain"):
        rows.append((residual + "AESc / stain image AUROC", residual + ae + " image AUROC", HIGHER, only))
        rows += [(residual + aesc + " image AUROC", residual + ae + " image AUROC", SAME, only)
                 for aesc in ("AESc / clean", "AESc / gaussian", "AESc / salt_and_pepper")
                 if (aesc, ae) != ("AESc / clean", "AE / clean")]
    return [(chapter, *row) for row in rows]


CLAIMS += _chapter_3()


def _chapter_6() -> list[tuple]:
    """Chapter 6's comparisons: the VAE-GAN, AdaCos, and CAVGA's maps against each other."""
    attention, residual = "CAVGA: 1 − attention ", "CAVGA: residual (x − x̂)² "
    saliency, no_l_ae = "CAVGA: saliency (Grad-CAM of the error) ", "CAVGA without L_ae: 1 − attention "
    vae, autoencoder = "VAE: residual ", "AE (MSE), Chapter 2 "
    rows = [
        # the compare cell
        ("attention IoU at the masks' area", "chance IoU", SAME,
         "It is above chance on every seed, but the difference is within the spread of the seeds"),
        # section 2
        ("VAE-GAN reconstructions sharpness", "VAE reconstructions sharpness", HIGHER,
         "The VAE-GAN's reconstructions are sharper than the VAE's on every training seed, beyond the spread"),
        # section 3, AdaCos
        ("VAE + AdaCos AUROC: distance to normal centre", "VAE AUROC: distance to normal centre", HIGHER,
         "Its image AUROC is higher on every training seed, beyond the spread (0.897 ± 0.036 against 0.591 ± 0.030"),
        ("VAE-GAN + AdaCos (the talk's total loss) AUROC: distance to normal centre", "VAE + AdaCos AUROC: distance to normal centre", SAME,
         "Its distance score and the second model's are within the spread of the seeds"),
        ("VAE-GAN + AdaCos (the talk's total loss) AUROC: 1 − cos to normal class", "VAE + AdaCos AUROC: 1 − cos to normal class", SAME,
         "Their cosine scores are within the spread of the seeds too (0.801 ± 0.153 against 0.816 ± 0.105)"),
        # section 5, the bullets
        (no_l_ae + "pixel_auroc", attention + "pixel_auroc", LOWER,
         "Its pixel and image AUROC are lower on every seed, beyond the spread (pixel AUROC 0.553 ± 0.092"),
        (no_l_ae + "image_auroc", attention + "image_auroc", LOWER,
         "Its pixel and image AUROC are lower on every seed, beyond the spread (pixel AUROC 0.553 ± 0.092"),
        (saliency + "pixel_auroc", attention + "pixel_auroc", LOWER,
         "Its pixel AUROC, 0.346 ± 0.096, is below every other map's on every seed, beyond the spread"),
        (saliency + "pixel_auroc", residual + "pixel_auroc", LOWER,
         "Its pixel AUROC, 0.346 ± 0.096, is below every other map's on every seed, beyond the spread"),
        (saliency + "pixel_auroc", no_l_ae + "pixel_auroc", LOWER,
         "Its pixel AUROC, 0.346 ± 0.096, is below every other map's on every seed, beyond the spread"),
        (saliency + "pixel_auroc", vae + "pixel_auroc", LOWER,
         "Its pixel AUROC, 0.346 ± 0.096, is below every other map's on every seed, beyond the spread"),
        (saliency + "pixel_auroc", autoencoder + "pixel_auroc", LOWER,
         "Its pixel AUROC, 0.346 ± 0.096, is below every other map's on every seed, beyond the spread"),
        (saliency + "image_auroc", attention + "image_auroc", LOWER,
         "At the image level it is about chance (0.484 ± 0.126): below the attention, beyond the spread"),
        (saliency + "image_auroc", residual + "image_auroc", SAME,
         "but within the spread of the seeds of CAVGA's residual and of the map without $L_{ae}$"),
        (saliency + "image_auroc", no_l_ae + "image_auroc", SAME,
         "but within the spread of the seeds of CAVGA's residual and of the map without $L_{ae}$"),
        (attention + "image_auroc", vae + "image_auroc", HIGHER,
         "than the VAE's residual and CAVGA's own residual, on every seed and beyond the spread"),
        (attention + "image_auroc", residual + "image_auroc", HIGHER,
         "than the VAE's residual and CAVGA's own residual, on every seed and beyond the spread"),
        (attention + "image_auroc", autoencoder + "image_auroc", SAME,
         "Against the autoencoder of Chapter 2, trained 60 epochs, the difference is within the spread of the seeds"),
        (autoencoder + "pixel_auroc", attention + "pixel_auroc", HIGHER,
         "The autoencoder of Chapter 2 localises better, on every seed and beyond the spread"),
        (residual + "pixel_auroc", attention + "pixel_auroc", SAME,
         "The residual's pixel AUROC is within the spread of the attention's (0.707 ± 0.126 against 0.790 ± 0.056)"),
        (vae + "pixel_auroc", autoencoder + "pixel_auroc", LOWER,
         "The plain VAE is worse than the autoencoder on every seed, beyond the spread"),
        # the summary
        ("VAE-GAN reconstructions sharpness", "VAE reconstructions sharpness", HIGHER,
         "the discriminator raises the sharpness of the reconstructions on every training seed"),
        ("VAE-GAN + AdaCos (the talk's total loss) AUROC: distance to normal centre", "VAE + AdaCos AUROC: distance to normal centre", SAME,
         "is within the spread of the seeds of the VAE with AdaCos alone (0.897 ± 0.036)"),
        ("VAE + AdaCos AUROC: distance to normal centre", "VAE AUROC: distance to normal centre", HIGHER,
         "without the similarity loss to 0.897 ± 0.036 with it, higher on every seed"),
        ("attention IoU at the masks' area", "chance IoU", SAME,
         "That is above chance on every seed, but within the spread of the seeds: the quick run is unstable"),
        (no_l_ae + "pixel_auroc", attention + "pixel_auroc", LOWER,
         "Without the attention expansion loss the same maps give a pixel AUROC of 0.553 ± 0.092, lower on every seed"),
        (residual + "pixel_auroc", attention + "pixel_auroc", SAME,
         "its pixel AUROC, 0.707 ± 0.126, is within the spread of the attention's"),
        (autoencoder + "pixel_auroc", attention + "pixel_auroc", HIGHER,
         "The autoencoder of Chapter 2, trained 60 epochs, localises better at the pixel level, beyond the spread"),
        (autoencoder + "image_auroc", attention + "image_auroc", SAME,
         "Its image AUROC, 0.897 ± 0.030, is within the spread of the attention's"),
        (saliency + "pixel_auroc", attention + "pixel_auroc", LOWER,
         "Its pixel AUROC, 0.346 ± 0.096, is below every other map's on every seed and below 0.5"),
    ]
    return [("06_vae_gan_attention", *row) for row in rows]


CLAIMS += _chapter_6()


def _chapter_8() -> list[tuple]:
    """Chapter 8's comparisons: PIADE against the stacked pyramidal AE, and both ablations."""
    P, Q = "PIADE ablation ", "stacked AE ablation "
    E1, E2 = Q + "encoders / 1 (pyramid 1) image AUROC", Q + "encoders / 2 (pyramid 1, 2) image AUROC"
    E4 = Q + "encoders / 4 (pyramid 1, 2, 3, 6: the thesis's) image AUROC"
    E6 = Q + "encoders / 6 (pyramid 1, 2, 3, 4, 6, 8) image AUROC"
    L0, L1 = Q + "loss / MSE only (λ = 0) image AUROC", Q + "loss / MSE + perceptual (λ = 1, the thesis's) image AUROC"
    MSE, SSIM = P + "loss / MSE image AUROC", P + "loss / MSE + SSIM image AUROC"
    FULL = P + "loss / MSE + SSIM + perceptual (PIADE) image AUROC"
    rows = [
        # the compare cell
        ("PIADE image AUROC", "stacked pyramidal AE image AUROC", SAME,
         "PIADE and the stacked pyramidal AE do not differ beyond the spread of the seeds"),
        ("brick PIADE image AUROC", "brick chapter 2 AE image AUROC", HIGHER,
         "PIADE beats the Chapter 2 autoencoder on every seed, beyond the spread"),
        # section 5, the stacked AE's ablations
        (E2, E1, SAME, "Each step, one to two, two to four, four to six encoders, is within the spread of the seeds"),
        (E4, E2, SAME, "Each step, one to two, two to four, four to six encoders, is within the spread of the seeds"),
        (E6, E4, SAME, "Each step, one to two, two to four, four to six encoders, is within the spread of the seeds"),
        (E4, E1, SAME, "Four encoders against one is within the spread too. Only six encoders"),
        (E6, E1, HIGHER, "Only six encoders against one is higher, beyond the spread (+0.011 ± 0.008)"),
        (L1, L0, HIGHER, "The perceptual loss matters more, on every seed and beyond the spread"),
        # the summary
        ("PIADE image AUROC", "stacked pyramidal AE image AUROC", SAME,
         "PIADE and the stacked pyramidal AE do not differ beyond the spread of the seeds (+0.005 ± 0.006)"),
        (SSIM, MSE, HIGHER, "MSE only 0.910 ± 0.049, MSE + SSIM 0.952 ± 0.029, all three 0.991 ± 0.003, each step higher"),
        (FULL, SSIM, HIGHER, "MSE + SSIM 0.952 ± 0.029, all three 0.991 ± 0.003, each step higher beyond the spread"),
        (FULL, MSE, HIGHER, "Over training seeds 0–4 only the loss terms make a difference beyond the spread"),
        (P + "vectors / one (no routing) image AUROC", P + "vectors / two (PIADE) image AUROC", SAME,
         "One vector (0.992 ± 0.003) and SE off (0.988 ± 0.009) are within the spread"),
        (P + "SE / off image AUROC", P + "SE / on (PIADE) image AUROC", SAME,
         "and SE off (0.988 ± 0.009) are within the spread of the seeds of the full PIADE"),
        (E6, E1, HIGHER, "Of these, only six encoders against one is higher beyond the spread"),
        (L0, L1, LOWER, "loss ($\\lambda = 0$) cost far more: 0.898 ± 0.013 against 0.986 ± 0.007, lower on every seed"),
        ("brick PIADE image AUROC", "brick chapter 2 AE image AUROC", HIGHER,
         "PIADE beats the Chapter 2 autoencoder on every seed, beyond the spread (+0.286 ± 0.038)"),
        ("brick PIADE image AUROC", "PIADE image AUROC", LOWER,
         "PIADE scores lower on textures than on digits, on every seed"),
    ]
    return [("08_pyramidal", *row) for row in rows]


CLAIMS += _chapter_8()


def prose(chapter: str) -> str:
    notebook = nbformat.read(REPO / "notebooks" / f"{chapter}.ipynb", as_version=4)
    return " ".join(re.sub(r"\s+", " ", cell.source) for cell in notebook.cells if cell.cell_type == "markdown")


@pytest.mark.parametrize("chapter, first, second, verdict, sentence", CLAIMS,
                         ids=[f"{c}: {a} vs {b}" for c, a, b, _, _ in CLAIMS])
def test_the_prose_states_what_the_seeds_show(chapter, first, second, verdict, sentence):
    figures = adcourse.results.load_stored(f"spread/{chapter}.json")["figures"]
    assert spread.paired_difference(figures[first], figures[second])["verdict"] == verdict
    assert re.sub(r"\s+", " ", sentence) in prose(chapter), f"{chapter}: the prose no longer says {sentence!r}"


def test_every_comparison_a_chapter_prints_is_held_here():
    """The pairs of every compare cell of the chapters are rows of CLAIMS."""
    held = {(c, a, b) for c, a, b, _, _ in CLAIMS}
    printed = set()
    for path in sorted((REPO / "notebooks").glob("[0-9]*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and "committed.compare" in cell.source:
                printed |= {(path.stem, a, b) for a, b in re.findall(r'\("([^"]+)", "([^"]+)"\)', cell.source)}
    assert printed and printed <= held, f"compared in a chapter but not held in CLAIMS: {sorted(printed - held)}"


# Chapter 10 also ranks the methods of the committed quick benchmark (book/results/quick/), three seeds
# that each draw their own data and train: the same paired test, with Student's t for two degrees of
# freedom. Each row is a ranking the chapter's prose states (sections 5-6 and the summary).
BENCH_CLAIMS = [
    ("textures_brick", "image_auroc", "patchcore", "padim", SAME),
    ("textures_grass", "image_auroc", "patchcore", "padim", SAME),
    ("textures_gravel", "image_auroc", "patchcore", "padim", SAME),
    ("textures_grass", "image_auroc", "patchcore", "fanogan", HIGHER),
    ("textures_gravel", "image_auroc", "patchcore", "pyramidal_ae", HIGHER),
    ("textures_brick", "aupro", "padim", "patchcore", HIGHER),
    ("textures_brick", "image_auroc", "padim", "ae_l2", HIGHER),
]


@pytest.mark.parametrize("data, figure, first, second, verdict", BENCH_CLAIMS,
                         ids=[f"{d} {f}: {a} vs {b}" for d, f, a, b, _ in BENCH_CLAIMS])
def test_chapter_10_rankings_hold_over_the_committed_benchmark_seeds(data, figure, first, second, verdict):
    results = adcourse.results.load_stored(f"quick/bench_quick_{data}.json")["results"]
    per_seed = lambda method: {s: row[figure] for s, row in results[method]["seeds"].items()}  # noqa: E731
    assert spread.paired_difference(per_seed(first), per_seed(second))["verdict"] == verdict
