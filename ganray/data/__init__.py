"""Data for ganray: the built-in procedural faces, `ganray data import`, and the training dataset."""
from ganray.data.dataset import build_train_dataset, dataset_attributes, dataset_manifest_hash, to_training_batch
from ganray.data.importer import run_import
from ganray.data.synthetic import ATTRIBUTES, render_face, synthetic_dataset

__all__ = [
    "ATTRIBUTES",
    "build_train_dataset",
    "dataset_attributes",
    "dataset_manifest_hash",
    "render_face",
    "run_import",
    "synthetic_dataset",
    "to_training_batch",
]
