"""Data loading: split discovery, datasets, the epoch-aware sampler and loader factory, shared preprocessing.

`dataloader.preprocess` is importable on its own (numpy, OpenCV, torch only) for the demo and exports.
"""
from dataloader.datasets import (
    IMAGE_EXTENSIONS,
    DataSplits,
    EpochAwareDistributedSampler,
    ImageClassificationDataset,
    build_datasets,
    build_loader,
    build_split_dataset,
)
from dataloader.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecodeError,
    Preprocessing,
    decode_image,
    letterbox_resize,
    load_image_tensor,
    normalize_on_device,
    to_chw_uint8,
)

__all__ = [
    "IMAGE_EXTENSIONS", "DataSplits", "EpochAwareDistributedSampler", "ImageClassificationDataset",
    "build_datasets", "build_loader", "build_split_dataset",
    "IMAGENET_MEAN", "IMAGENET_STD", "ImageDecodeError", "Preprocessing", "decode_image", "letterbox_resize",
    "load_image_tensor", "normalize_on_device", "to_chw_uint8",
]
