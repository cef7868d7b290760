"""Data for ganray: the built-in procedural faces, `ganray data import`, and the training dataset.

Import the submodules (synthetic, manifest, importer, dataset): this file stays empty on purpose, so a Ray
worker that only needs the importer or the renderer does not import torch through dataset.py.
"""
