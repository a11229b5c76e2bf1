"""dataloader.augment: every `--aug` entry on letterboxed uint8 images; deterministic per (seed, epoch, index).

The generic tests are parametrised over the registry, so a new entry is exercised the moment it is registered;
`SPECIFIC_CHECKS` must also name it, with a check of what that augmentation is supposed to do.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from config import Config, parse_config
from dataloader.augment import (
    AUGMENTATIONS,
    AugmentationPipeline,
    AugmentOptions,
    FlipCrop,
    parse_aug,
    random_affine,
)
from dataloader.datasets import ImageClassificationDataset, build_loader
from dataloader.preprocess import letterbox_resize
from engine.components import aug_options_of
from utils.errors import UsageError

SIZE = (40, 40)


def scene(seed: int = 0, shape=(30, 44)) -> np.ndarray:
    """A small colour 'photo' (gradient, disc, bar, mild noise), letterboxed so it has pad rows of 0."""
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([40 + 150 * xx / w, 60 + 120 * yy / h, np.full((h, w), 110.0)], axis=2)
    image[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2] = (230, 40, 40)
    image[h // 5:h // 5 + 4, w // 2:w - 3] = (20, 200, 30)
    image += rng.normal(0, 4, image.shape)
    return letterbox_resize(np.clip(image, 1, 255).astype(np.uint8), SIZE)  # content >= 1, pad == 0


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return scene()


def run(name: str, image: np.ndarray, *, seed: int = 3, epoch: int = 0, index: int = 0,
        pad_value: int = 0, options: AugmentOptions = AugmentOptions()) -> np.ndarray:
    return AugmentationPipeline(name, pad_value=pad_value, options=options)(image, seed=seed, epoch=epoch, index=index)


def outputs(name: str, image: np.ndarray, n: int = 24, **kwargs) -> list[np.ndarray]:
    return [run(name, image, index=i, **kwargs) for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# what every registered augmentation must do


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_uint8_in_uint8_out_same_shape_input_untouched(name, image):
    before = image.copy()
    for index in range(12):
        out = run(name, image, index=index)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert out.flags.c_contiguous
    assert np.array_equal(image, before)  # the RAM cache hands out its own array: never written to


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_pure_function_of_seed_epoch_index(name, image):
    for index in range(6):
        assert np.array_equal(run(name, image, epoch=2, index=index), run(name, image, epoch=2, index=index))
    epochs_differ = [not np.array_equal(run(name, image, epoch=0, index=i), run(name, image, epoch=1, index=i))
                     for i in range(12)]
    # erasing and gridmask leave half the images alone; vflip's two outcomes agree half the time
    minimum = 3 if name == "vflip" else 6
    assert sum(epochs_differ) >= minimum, epochs_differ
    seeds_differ = [not np.array_equal(run(name, image, seed=3, index=i), run(name, image, seed=4, index=i))
                    for i in range(12)]
    assert sum(seeds_differ) >= minimum, seeds_differ


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_global_random_state_is_left_alone(name, image):
    torch.manual_seed(11)
    np.random.seed(11)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    outputs(name, image, n=4)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[tuple[str, int]]:
    root = tmp_path_factory.mktemp("augment_images")
    samples = []
    for i in range(10):
        path = root / f"{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(scene(i, shape=(24 + i, 40)), cv2.COLOR_RGB2BGR))
        samples.append((str(path), i % 2))
    return samples


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_loader_batches_do_not_depend_on_worker_count(name, image_files):
    dataset = ImageClassificationDataset(image_files, ["a", "b"], image_size=(24, 24), aug=name, seed=5)

    def batches(workers: int) -> list[torch.Tensor]:
        loader = build_loader(dataset, batch_size=4, workers=workers, train=True, seed=5)
        loader.sampler.set_epoch(2)
        return [images for images, _, _ in loader]

    single, multi = batches(0), batches(2)
    assert len(single) == len(multi) == 2
    assert all(torch.equal(a, b) for a, b in zip(single, multi))
    plain = ImageClassificationDataset(image_files, ["a", "b"], image_size=(24, 24), seed=5)
    assert sum(not torch.equal(dataset[(i, 2)][0], plain[(i, 2)][0]) for i in range(10)) >= 4


# ---------------------------------------------------------------------------------------------------------------
# what each one is supposed to do


def check_basic(image):
    """The original `--aug`: identical to random_affine on the same stream, so old recipes reproduce."""
    for index in range(6):
        expected = random_affine(image, np.random.default_rng([3, 0, index]), 0)
        assert np.array_equal(run("basic", image, index=index), expected)


def _check_torchvision(name: str, transform, image):
    """Our wrapper runs torchvision's transform with a seed drawn from the item's stream, and varies per item."""
    for index in range(4):
        seed = int(np.random.default_rng([3, 0, index]).integers(0, 2**63 - 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            expected = transform(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        assert np.array_equal(run(name, image, index=index), expected)
    distinct = {out.tobytes() for out in outputs(name, image, n=16)}
    assert len(distinct) >= 10


def check_autoaugment(image):
    from torchvision.transforms import v2
    _check_torchvision("autoaugment", v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET,
                                                     interpolation=v2.InterpolationMode.BILINEAR, fill=0), image)


def check_randaugment(image):
    from torchvision.transforms import v2
    _check_torchvision("randaugment", v2.RandAugment(num_ops=2, magnitude=9,
                                                     interpolation=v2.InterpolationMode.BILINEAR, fill=0), image)


def check_trivialaugment(image):
    from torchvision.transforms import v2
    _check_torchvision("trivialaugment", v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR, fill=0),
                       image)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def check_myaugment(image):
    """Small geometry (each output still matches the input or its mirror), colour varies, some flips, new pad."""
    outs = outputs("myaugment", image, n=32, pad_value=0)
    mirrored = cv2.flip(image, 1)
    similarity = [(_correlation(o, image), _correlation(o, mirrored)) for o in outs]
    assert all(max(pair) > 0.5 for pair in similarity), similarity
    flipped = sum(m > s for s, m in similarity)
    assert 6 <= flipped <= 26  # p = 0.5
    means = np.array([o[image > 0].mean() for o in outs])
    assert means.std() > 3  # colour jitter moves the brightness
    assert len({o.tobytes() for o in outs}) == 32
    grey = outputs("myaugment", np.full_like(image, 128), n=32, pad_value=0)
    assert any(np.unique(g).size > 40 for g in grey)  # noise (or rotation borders and blur) on a flat image


def check_erasing(image):
    """Half the images get one rectangle of noise covering 2-33% of the image; the rest stay untouched."""
    h, w = image.shape[:2]
    erased = 0
    for out in outputs("erasing", image, n=40):
        changed = np.argwhere((out != image).any(axis=2))
        if changed.size == 0:
            continue
        erased += 1
        (top, left), (bottom, right) = changed.min(axis=0), changed.max(axis=0) + 1
        box = (bottom - top) * (right - left)
        assert 0.01 * h * w <= box <= 0.33 * h * w + 2 * (h + w)
        inside = (out[top:bottom, left:right] != image[top:bottom, left:right]).any(axis=2).mean()
        assert inside > 0.9  # a filled rectangle of noise, not scattered pixels
    assert 10 <= erased <= 30


def check_gridmask(image):
    """Half the images lose 10-45% of their pixels to the pad value in a grid; the rest stay untouched."""
    masked = 0
    for out in outputs("gridmask", image, n=40, pad_value=0):
        changed = (out != image).any(axis=2)
        if not changed.any():
            continue
        masked += 1
        assert (out[changed] == 0).all()
        dropped = ((out == 0).all(axis=2) & (image > 0).all(axis=2)).sum() / (image > 0).all(axis=2).sum()
        assert 0.05 <= dropped <= 0.5, dropped
    assert 10 <= masked <= 30


def check_vflip(image):
    """Half the images upside down, the rest untouched; --vflip_p 1 flips every one, 0 none."""
    outs = outputs("vflip", image, n=40)
    flipped = sum(np.array_equal(o, image[::-1]) for o in outs)
    assert 10 <= flipped <= 30 and flipped + sum(np.array_equal(o, image) for o in outs) == 40
    assert all(np.array_equal(o, image[::-1]) for o in outputs("vflip", image, n=5, options=AugmentOptions(vflip_p=1)))
    assert all(np.array_equal(o, image) for o in outputs("vflip", image, n=5, options=AugmentOptions(vflip_p=0)))


def check_cutout(image):
    """Every image loses its holes: squares of the pad value, half the short side by default, clipped at the border."""
    h, w = image.shape[:2]
    for out in outputs("cutout", image, n=20, pad_value=0):
        dropped = ((out == 0).all(axis=2) & (image > 0).all(axis=2))
        assert 0 < dropped.sum() <= (min(h, w) // 2) ** 2
    for out in outputs("cutout", image, n=20, pad_value=0, options=AugmentOptions(cutout_holes=3, cutout_length=4)):
        dropped = ((out == 0).all(axis=2) & (image > 0).all(axis=2)).sum()
        assert 0 < dropped <= 3 * 16


def flip_shift_of(image, out, padding) -> tuple[bool, int, int] | None:
    """(mirrored, dy, dx) if `out` is `image`, maybe mirrored, moved by a whole-pixel shift of at most `padding` px
    with the pad value 0 where the shift uncovers the border; None if it is not."""
    h, w = image.shape[:2]
    for mirrored, source in ((False, image), (True, image[:, ::-1])):
        for dy in range(-padding, padding + 1):
            for dx in range(-padding, padding + 1):
                moved = np.zeros_like(image)
                moved[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
                    source[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
                if np.array_equal(out, moved):
                    return mirrored, dy, dx
    return None


def check_flipcrop(image):
    """A whole-pixel shift of at most --crop_padding px (after an optional mirror): every output is the image or its
    mirror moved by (dy, dx), with the pad value where the shift uncovers the border; --crop_padding 0 only flips."""
    moves = [flip_shift_of(image, out, 2) for out in outputs("flipcrop", image, n=30,
                                                              options=AugmentOptions(crop_padding=2))]
    assert None not in moves and len({m[1:] for m in moves}) > 5  # several offsets drawn, none beyond 2 px
    assert 5 <= sum(m[0] for m in moves) <= 25
    unshifted = outputs("flipcrop", image, n=6, options=AugmentOptions(crop_padding=0))
    assert all(flip_shift_of(image, o, 0)[1:] == (0, 0) for o in unshifted)
    with pytest.raises(ValueError, match="--crop_padding"):
        AugmentOptions(crop_padding=-1)
    assert aug_options_of(parse_config(["--crop_padding", "3"])[0]).crop_padding == 3  # the flag reaches the options


def check_altflipcrop(image):
    """`flipcrop` moves, but each image's mirror alternates from one epoch to the next (a fair coin per image for the
    first), a repeated copy in the same epoch shows the other side, and the shift is drawn afresh every epoch."""
    options = AugmentOptions(crop_padding=2)
    moves = [[flip_shift_of(image, run("altflipcrop", image, epoch=epoch, index=index, options=options), 2)
              for epoch in range(6)] for index in range(20)]
    assert all(None not in per_image for per_image in moves)
    for per_image in moves:
        assert all(a[0] != b[0] for a, b in zip(per_image, per_image[1:])), per_image  # the side alternates
        assert len({m[1:] for m in per_image}) > 1  # the shift does not
    assert 4 <= sum(per_image[0][0] for per_image in moves) <= 16  # first epoch: a coin per image
    pipeline = AugmentationPipeline("altflipcrop", options=options)
    for index in range(6):
        once, again = (flip_shift_of(image, pipeline(image, seed=3, epoch=4, index=index, draw=d), 2) for d in (0, 1))
        assert once[0] != again[0]
    combined = AugmentationPipeline("altflipcrop,erasing", options=options)
    for index in range(6):  # the item's stream is shared with the stages after it, as for every name
        rng = np.random.default_rng([3, 1, index])
        mirrored = flip_shift_of(image, run("altflipcrop", image, epoch=1, index=index, options=options), 2)[0]
        expected = AUGMENTATIONS.get("erasing")()(FlipCrop(0, 2).flip_shift(image, mirrored, rng), rng)
        assert np.array_equal(combined(image, seed=3, epoch=1, index=index), expected)


SPECIFIC_CHECKS = {
    "flipcrop": check_flipcrop,
    "altflipcrop": check_altflipcrop,
    "vflip": check_vflip,
    "cutout": check_cutout,
    "basic": check_basic,
    "autoaugment": check_autoaugment,
    "randaugment": check_randaugment,
    "trivialaugment": check_trivialaugment,
    "myaugment": check_myaugment,
    "erasing": check_erasing,
    "gridmask": check_gridmask,
}


@pytest.mark.parametrize("name", list(SPECIFIC_CHECKS))
def test_augmentation_does_what_it_says(name, image):
    SPECIFIC_CHECKS[name](image)


def test_every_registered_augmentation_has_a_specific_check():
    missing = set(AUGMENTATIONS) - set(SPECIFIC_CHECKS)
    assert not missing, f"--aug entries without a check in SPECIFIC_CHECKS: {sorted(missing)}"
    assert set(SPECIFIC_CHECKS) <= set(AUGMENTATIONS)


# ---------------------------------------------------------------------------------------------------------------
# names, combination, flags


def test_names_combine_in_the_order_given(image):
    combined = AugmentationPipeline("myaugment, erasing")
    assert combined.spec == "myaugment,erasing"
    for index in range(8):
        rng = np.random.default_rng([3, 1, index])
        expected = AUGMENTATIONS.get("erasing")()(AUGMENTATIONS.get("myaugment")()(image, rng), rng)
        assert np.array_equal(combined(image, seed=3, epoch=1, index=index), expected)


def test_unknown_name_fails_with_choices_and_closest_match():
    with pytest.raises(ValueError, match=r"unknown --aug 'myaugmnt' \(did you mean 'myaugment'\?\).*gridmask"):
        parse_aug("basic,myaugmnt")
    with pytest.raises(ValueError, match="unknown --aug"):
        ImageClassificationDataset([], ["a"], image_size=8, aug="randaugmnet")


def test_parse_aug_and_legacy_boolean_configs():
    assert parse_aug(None) is None and parse_aug(False) is None and parse_aug("") is None
    assert parse_aug(True) == "basic" and parse_aug(" gridmask ,basic") == "gridmask,basic"
    assert parse_config(["--aug"])[0].aug == "basic"  # a bare --aug keeps the old behaviour
    assert parse_config(["--aug", "randaugment,erasing"])[0].aug == "randaugment,erasing"
    assert parse_config([])[0].aug is None
    assert Config.from_dict({"aug": True}).aug == "basic"  # checkpoints written before --aug took names
    assert Config.from_dict({"aug": False}).aug is None


def test_erasing_and_gridmask_take_their_parameters(image):
    """--erasing_p/--erasing_scale/--erasing_value and --gridmask_p/--gridmask_d/--gridmask_ratio reach the
    augmentations; the defaults are the built-in values (same outputs as without options)."""
    h, w = image.shape[:2]
    grey = AugmentOptions(erasing_p=1.0, erasing_scale=(0.1, 0.1), erasing_value=7)
    for out in outputs("erasing", image, n=10, options=grey):
        changed = (out != image).any(axis=2)
        assert changed.any() and (out[changed] == 7).all()
        assert 0.05 * h * w <= changed.sum() <= 0.15 * h * w
    assert all(np.array_equal(o, image) for o in outputs("erasing", image, n=10, options=AugmentOptions(erasing_p=0)))
    fine = AugmentOptions(gridmask_p=1.0, gridmask_d=(4, 4), gridmask_ratio=(0.5, 0.5), gridmask_rotate=0)
    for out in outputs("gridmask", image, n=5, pad_value=0, options=fine):
        dropped = ((out == 0).all(axis=2) & (image > 0).all(axis=2)).sum() / (image > 0).all(axis=2).sum()
        assert 0.15 <= dropped <= 0.35  # squares of 2 px every 4 px: a quarter of the pixels
    for name in ("erasing", "gridmask"):
        assert all(np.array_equal(a, b) for a, b in zip(outputs(name, image, n=8),
                                                          outputs(name, image, n=8, options=AugmentOptions())))
    with pytest.raises(ValueError, match="--erasing_scale"):
        AugmentOptions(erasing_scale=(0.5, 0.1))


def test_every_augmentation_flag_reaches_the_options():
    """aug_options_of maps each --erasing_* / --cutout_* / --gridmask_* / --vflip_p / --crop_padding flag onto
    AugmentOptions; no flag gives the built-in defaults, and a bad value names its flag in one line."""
    assert aug_options_of(parse_config([])[0]) == AugmentOptions()
    argv = ["--erasing_p", "0.3", "--erasing_scale", "0.1", "0.2", "--erasing_ratio", "0.5", "2",
            "--erasing_value", "128", "--cutout_holes", "2", "--cutout_length", "5", "--gridmask_p", "0.7",
            "--gridmask_d", "4", "9", "--gridmask_ratio", "0.3", "0.5", "--gridmask_rotate", "3", "--vflip_p", "0.2",
            "--crop_padding", "1"]
    assert aug_options_of(parse_config(argv)[0]) == AugmentOptions(
        erasing_p=0.3, erasing_scale=(0.1, 0.2), erasing_ratio=(0.5, 2.0), erasing_value=128, cutout_holes=2,
        cutout_length=5, gridmask_p=0.7, gridmask_d=(4, 9), gridmask_ratio=(0.3, 0.5), gridmask_rotate=3.0,
        vflip_p=0.2, crop_padding=1)
    assert aug_options_of(parse_config(["--erasing_value", "random"])[0]).erasing_value is None
    for argv, flag in ((["--erasing_value", "grey"], "--erasing_value grey"),
                       (["--erasing_value", "300"], "--erasing_value 300"),
                       (["--erasing_scale", "0.5", "0.1"], "--erasing_scale 0.5 0.1"),
                       (["--gridmask_d", "2", "9"], "--gridmask_d 2 9")):
        with pytest.raises(UsageError, match=flag):
            aug_options_of(parse_config(argv)[0])
