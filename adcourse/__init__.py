"""adcourse: the reusable parts of the course *Deep image anomaly detection, step by step*."""

__version__ = "0.1.0"
