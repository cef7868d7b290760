"""Labelers: what a face shows, attribute by attribute, each value with a confidence.

A labeler is named in a job config (`LabelerConfig.name`) and built with `build_labeler`. The bulk
job runs it as a Ray Data stage on an actor pool; training-data tools and evaluation can call it on
any batch of images. See `base.py` for the contract every labeler keeps.
"""
from ganray.labels.base import LABELERS, AttributeLabels, Labeler, LabelerError, build_labeler

__all__ = ["LABELERS", "AttributeLabels", "Labeler", "LabelerError", "build_labeler"]
