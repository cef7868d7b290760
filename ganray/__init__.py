"""ganray: train face GANs on Ray, turn them into labeled, balanced synthetic-face datasets and a face API."""

__version__ = "0.1.0"
