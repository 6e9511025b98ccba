"""Models, one file per family. Importing a family registers its detectors for the benchmark."""
from .autoencoders import AutoencoderDetector, ConvAutoencoder
from .gans import FAnoGANDetector, FCBiGANDetector  # noqa: F401
from .corruption_ae import AE, AESc, CorruptionAEDetector, GaussianActivationScorer  # noqa: F401
from .capsules import CapsNet, CapsNetDetector, dynamic_routing, squash  # noqa: F401
from .siren import Siren, SirenInpaintDetector, SirenInpainter  # noqa: F401
from .vit_gmm import VTADL, VTADLDetector  # noqa: F401
from .vae_gan import VAE, AdaCos, CAVGADetector, VAEDetector  # noqa: F401
from .padim import PaDiMDetector  # noqa: F401
from .patchcore import PatchCoreDetector  # noqa: F401
from .pyramidal import PIADE, PIADEDetector, PyramidalAE, PyramidalAEDetector, PyramidPooling, SEBlock  # noqa: F401

__all__ = ["AutoencoderDetector", "ConvAutoencoder"]
