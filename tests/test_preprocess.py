"""dataloader.preprocess: decoding of awkward image kinds, letterbox geometry, normalisation, config round trip."""
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch

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


def write_image(path, image: np.ndarray) -> str:
    ok, buf = cv2.imencode(path.suffix, image)
    assert ok
    buf.tofile(str(path))
    return str(path)


def write_palette_png(path, indices: np.ndarray, palette: list[tuple[int, int, int]]) -> str:
    """A colour-type-3 (palette) PNG built by hand: OpenCV cannot write one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = indices.shape
    raw = b"".join(b"\x00" + indices[y].astype(np.uint8).tobytes() for y in range(h))  # filter type 0 per row
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
           + chunk(b"PLTE", bytes(v for rgb in palette for v in rgb))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.write_bytes(png)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# decoding


def test_decode_color_png_is_rgb(tmp_path):
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's BGR order
    rgb = decode_image(write_image(tmp_path / "blue.png", bgr))
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 2] == 200).all() and (rgb[..., :2] == 0).all()


def test_decode_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = decode_image(write_image(tmp_path / "gray.png", gray))
    assert rgb.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)


def test_decode_rgba_is_composited_on_black(tmp_path):
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[..., :3] = (40, 100, 200)  # B, G, R
    bgra[0, :, 3] = 255  # opaque row
    bgra[1, 0, 3] = 0  # transparent
    bgra[1, 1:, 3] = 128  # half
    rgb = decode_image(write_image(tmp_path / "rgba.png", bgra))
    assert rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[0, 0], (200, 100, 40))
    np.testing.assert_array_equal(rgb[1, 0], (0, 0, 0))
    np.testing.assert_array_equal(rgb[1, 1], (100, 50, 20))  # round(v * 128 / 255)


def test_decode_16bit_scales_to_uint8(tmp_path):
    gray16 = np.array([[0, 257, 65535, 32896]], np.uint16)
    rgb = decode_image(write_image(tmp_path / "deep.png", gray16))
    np.testing.assert_array_equal(rgb[0, :, 0], (0, 1, 255, 128))
    bgr16 = np.zeros((1, 1, 3), np.uint16)
    bgr16[0, 0] = (0, 0, 65535)  # pure red at 16 bit
    np.testing.assert_array_equal(decode_image(write_image(tmp_path / "deep_rgb.tif", bgr16))[0, 0], (255, 0, 0))


def test_decode_palette_png(tmp_path):
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    indices = np.array([[0, 1, 2], [2, 1, 0]])
    rgb = decode_image(write_palette_png(tmp_path / "pal.png", indices, palette))
    assert rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[0], palette)
    np.testing.assert_array_equal(rgb[1], palette[::-1])


def test_decode_non_ascii_path(tmp_path):
    folder = tmp_path / "猫の画像"
    folder.mkdir()
    path = write_image(folder / "bild_ä.jpg", np.full((8, 8, 3), 90, np.uint8))
    assert decode_image(path).shape == (8, 8, 3)


def _truncated(tmp_path, suffix):
    ok, buf = cv2.imencode(suffix, np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(buf.tobytes()[: len(buf) // 2])
    return path


@pytest.mark.parametrize("kind", ["zero_byte", "truncated_png", "truncated_jpg", "text_as_png"])
def test_corrupt_files_raise_decode_error_naming_file(tmp_path, kind):
    if kind == "zero_byte":
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
    elif kind == "truncated_png":
        path = _truncated(tmp_path, ".png")
    elif kind == "truncated_jpg":
        path = _truncated(tmp_path, ".jpg")
    else:
        path = tmp_path / "notes.png"
        path.write_text("this is not an image\n")
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_image(path)
    message = str(excinfo.value)
    assert str(path) in message and "dataloader/check_images.py" in message
    assert excinfo.value.path == str(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "nope.png")


# ---------------------------------------------------------------------------------------------------------------
# letterbox


def _content_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) inclusive bounds of non-zero pixels."""
    rows = np.where(image.any(axis=(1, 2)))[0]
    cols = np.where(image.any(axis=(0, 2)))[0]
    return rows[0], rows[-1], cols[0], cols[-1]


@pytest.mark.parametrize(
    "src_hw, dst_hw, box",
    [
        ((100, 50), (64, 64), (0, 63, 16, 47)),  # tall: 64x32 content, columns 16..47
        ((50, 100), (64, 64), (16, 47, 0, 63)),  # wide: 32x64 content, rows 16..47
        ((30, 30), (64, 64), (0, 63, 0, 63)),  # square, enlarged: fills everything
        ((10, 40), (32, 32), (12, 19, 0, 31)),  # 4:1 wide, enlarged 0.8x: 8x32 rows 12..19
        ((100, 50), (40, 80), (0, 39, 30, 49)),  # non-square target: 40x20 at columns 30..49
        ((7, 3), (5, 5), (0, 4, 1, 2)),  # scale 5/7: width round(2.14) = 2, left (5 - 2) // 2 = 1
    ],
)
def test_letterbox_geometry(src_hw, dst_hw, box):
    image = np.full(src_hw + (3,), 255, np.uint8)
    out = letterbox_resize(image, dst_hw)
    assert out.shape == dst_hw + (3,) and out.dtype == np.uint8
    top, bottom, left, right = box
    assert _content_box(out) == (top, bottom, left, right)
    # Inside the box the content is untouched white, outside it is exactly the pad value.
    assert (out[top:bottom + 1, left:right + 1] == 255).all()
    mask = np.ones(dst_hw, bool)
    mask[top:bottom + 1, left:right + 1] = False
    assert (out[mask] == 0).all()


def test_letterbox_pad_value_and_exact_pixels():
    image = np.zeros((2, 4, 3), np.uint8)
    image[:, :2] = (10, 20, 30)
    image[:, 2:] = (200, 100, 50)
    out = letterbox_resize(image, (8, 8), pad_value=114)  # 2x enlargement -> 4x8 content at rows 2..5
    assert (out[:2] == 114).all() and (out[6:] == 114).all()
    np.testing.assert_array_equal(out[2, 0], (10, 20, 30))
    np.testing.assert_array_equal(out[5, 7], (200, 100, 50))


def test_letterbox_same_size_is_identity():
    image = np.random.default_rng(1).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(letterbox_resize(image, (16, 24)), image)


# ---------------------------------------------------------------------------------------------------------------
# tensors and config


def test_to_chw_and_normalize():
    image = np.zeros((4, 6, 3), np.uint8)
    image[..., 0] = 255
    chw = to_chw_uint8(image)
    assert chw.shape == (3, 4, 6) and chw.dtype == torch.uint8
    batch = torch.stack([chw, chw])
    out = normalize_on_device(batch, IMAGENET_MEAN, IMAGENET_STD, channels_last=False)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 6)
    torch.testing.assert_close(out[0, 0, 0, 0], torch.tensor((1 - 0.485) / 0.229))
    torch.testing.assert_close(out[1, 2, 3, 5], torch.tensor((0 - 0.406) / 0.225))
    cl = normalize_on_device(batch, IMAGENET_MEAN, IMAGENET_STD, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, out)


def test_normalize_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        normalize_on_device(torch.zeros(1, 3, 2, 2), IMAGENET_MEAN, IMAGENET_STD, channels_last=False)


def test_preprocessing_round_trip_and_load(tmp_path):
    pre = Preprocessing(image_size=(20, 10), mean=IMAGENET_MEAN, std=IMAGENET_STD, pad_value=3)
    d = pre.to_dict()
    assert d == {"image_size": [20, 10], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                 "pad_value": 3, "channel_order": "RGB", "resize_mode": "letterbox", "crop_pct": 0.875}
    assert Preprocessing.from_dict(d) == pre
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({**d, "resize": "stretch"})
    tensor = load_image_tensor(write_image(tmp_path / "a.png", np.full((10, 10, 3), 255, np.uint8)), pre)
    assert tensor.shape == (3, 20, 10)
    assert (tensor[:, :5] == 3).all() and (tensor[:, 5:15] == 255).all() and (tensor[:, 15:] == 3).all()
