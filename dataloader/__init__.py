"""Data loading: split discovery, datasets, samplers and the loader factory, per-image augmentation (run in the
loader workers), batch augmentation on the device (multi-scale, mixes), decoding on the device (`--decode device`),
shared preprocessing.

`dataloader.preprocess` is importable on its own (numpy, OpenCV, torch only) for the demo and exports.
"""
from dataloader.augment import AUGMENTATIONS, AugmentationPipeline, build_augmentation, parse_aug
from dataloader.datasets import (
    IMAGE_EXTENSIONS,
    DataSplits,
    EpochAwareDistributedSampler,
    ImageClassificationDataset,
    build_datasets,
    build_loader,
    build_split_dataset,
)
from dataloader.gpu_decode import EncodedBatch, EncodedImageDataset, encode_splits
from dataloader.mix import MIXES, BatchAugment, build_batch_augment, hard_labels, multi_scale_shapes
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
from dataloader.sampler import ClassBalancedDistributedSampler

__all__ = [
    "AUGMENTATIONS", "AugmentationPipeline", "build_augmentation", "parse_aug",
    "EncodedBatch", "EncodedImageDataset", "encode_splits",
    "MIXES", "BatchAugment", "build_batch_augment", "hard_labels", "multi_scale_shapes",
    "ClassBalancedDistributedSampler",
    "IMAGE_EXTENSIONS", "DataSplits", "EpochAwareDistributedSampler", "ImageClassificationDataset",
    "build_datasets", "build_loader", "build_split_dataset",
    "IMAGENET_MEAN", "IMAGENET_STD", "ImageDecodeError", "Preprocessing", "decode_image", "letterbox_resize",
    "load_image_tensor", "normalize_on_device", "to_chw_uint8",
]
