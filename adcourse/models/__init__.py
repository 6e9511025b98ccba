"""Models, one file per family. Importing a family registers its detectors for the benchmark."""
from .autoencoders import AutoencoderDetector, ConvAutoencoder

__all__ = ["AutoencoderDetector", "ConvAutoencoder"]
