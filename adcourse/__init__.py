"""adcourse: the reusable parts of the course *Deep image anomaly detection, step by step*."""

__version__ = "0.1.0"

# The model files register their detectors in adcourse.detectors; importing them here, once, fills
# the registry for every user of the package (detectors.py itself imports no model).
from . import models  # noqa: E402,F401
