"""Data: loaders for ADE20K, Cityscapes, COCO-Stuff and custom folders, SPADE preprocessing,
validation before training, class names/palettes, and the built-in ``landscapes`` data set.

Main entry points: ``build_dataset(cfg, split, train)``, ``validate_dataset(...)``,
``infer_label_nc(...)``, ``colorize(label_map, palette)``, ``landscapes.ensure_landscapes(...)``.
One-hot encoding happens on the batch's device with ``semantics.make_semantics``.
"""

from ccfpse.data.datasets import (
    DATASET_MODES,
    ADE20KDataset,
    CityscapesDataset,
    CocoStuffDataset,
    CustomDataset,
    LabelFolder,
    LabelRemap,
    PairedDataset,
    SampleError,
    build_dataset,
)
from ccfpse.data.labels import Palette, class_names, colorize, get_palette, load_palette
from ccfpse.data.semantics import instance_edges, make_semantics
from ccfpse.data.validate import DataReport, infer_label_nc, validate_dataset

__all__ = [
    "DATASET_MODES",
    "ADE20KDataset",
    "CityscapesDataset",
    "CocoStuffDataset",
    "CustomDataset",
    "LabelFolder",
    "LabelRemap",
    "PairedDataset",
    "SampleError",
    "build_dataset",
    "Palette",
    "class_names",
    "colorize",
    "get_palette",
    "load_palette",
    "instance_edges",
    "make_semantics",
    "DataReport",
    "infer_label_nc",
    "validate_dataset",
]
