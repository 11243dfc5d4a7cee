"""Image input: odd files decode correctly or fail with one line naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from regionclip_cli.core.errors import InputError
from regionclip_cli.data.images import (
    TRANSPARENT_BACKGROUND,
    ImageLoader,
    ImageTransform,
    LoadedImage,
    NamedImage,
    LoadFailure,
    ResizeConfig,
    find_images,
    load_image,
    pad_batch,
    resize_for_model,
    to_model_tensor,
)

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, mode="RGB")


def test_normal_jpeg_loads_as_rgb(tmp_path):
    path = tmp_path / "photo.jpg"
    _gradient(64, 48).save(path, quality=95)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (64, 48)
    # JPEG is lossy, but a smooth gradient survives closely.
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(_gradient(64, 48), dtype=int)).mean() < 3


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((10, 20), 77, dtype=np.uint8), mode="L").save(path)
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (10, 20, 3)
    assert (pixels == 77).all()


def test_rgba_is_composited_on_grey(tmp_path):
    path = tmp_path / "alpha.png"
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (255, 0, 0, 255)  # opaque red on the left
    rgba[:, 4:] = (0, 255, 0, 0)  # fully transparent on the right
    Image.fromarray(rgba, mode="RGBA").save(path)
    pixels = np.asarray(load_image(path))
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[0, 7]) == TRANSPARENT_BACKGROUND


def test_palette_with_transparency_is_composited(tmp_path):
    path = tmp_path / "palette.gif"
    palette_image = Image.new("P", (6, 6), 0)
    palette_image.putpalette([0, 0, 255] + [255, 255, 255] * 255)
    palette_image.save(path, transparency=0)
    pixels = np.asarray(load_image(path))
    assert tuple(pixels[3, 3]) == TRANSPARENT_BACKGROUND


def test_sixteen_bit_twelve_bit_data_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "depth16.png"
    values = np.linspace(0, 4095, 32 * 16).reshape(16, 32).astype(np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    pixels = np.asarray(load_image(path))[..., 0].astype(int)
    assert pixels.min() == 0 and pixels.max() == 255
    # A linear ramp stays a linear ramp: middle value near mid grey, not white.
    expected = np.rint(values / 4095 * 255)
    assert np.abs(pixels - expected).max() <= 1
    assert (pixels < 255).mean() > 0.9


def test_sixteen_bit_full_range_uses_65535(tmp_path):
    path = tmp_path / "full16.png"
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg_converts(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    r, g, b = np.asarray(load_image(path))[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "sideways.jpg"
    stored = np.zeros((40, 60, 3), dtype=np.uint8)
    stored[:, :10] = (255, 255, 255)  # white stripe on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (40, 60)  # width and height swapped
    pixels = np.asarray(image).mean(axis=2)
    # Rotating clockwise moves the stored left edge to the top.
    assert pixels[:8].mean() > 200 and pixels[20:].mean() < 30


def test_truncated_jpeg_names_the_file(tmp_path):
    path = tmp_path / "cut.jpg"
    _gradient(200, 150).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as caught:
        load_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "truncated" in message


def test_non_image_with_jpg_extension(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(InputError, match="notes.jpg: not an image format"):
        load_image(path)


def test_missing_file_and_folder_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path)


def test_oversized_image_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(InputError, match="decompression bombs"):
        load_image(path, max_pixels=5000)
    assert load_image(path, max_pixels=None).size == (100, 100)


def test_find_images_walks_folders_and_reports_problems(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / ".hidden").mkdir()
    for name in ("b.JPG", "a.png", "sub/c.webp", "readme.txt", ".hidden/d.jpg", "._e.jpg"):
        (photos / name).write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    explicit = tmp_path / "single.tif"
    explicit.write_bytes(b"x")

    found, problems = find_images([photos, explicit, tmp_path / "missing", empty, photos / "a.png"])
    assert found == [photos / "a.png", photos / "b.JPG", photos / "sub" / "c.webp", explicit]
    assert problems[0] == f"{tmp_path / 'missing'}: no such file or folder"
    assert problems[1].startswith(f"{empty}: no images found (looked for .jpg, .jpeg, .png")
    assert len(problems) == 2


@pytest.mark.parametrize(
    ("size", "spec", "expected"),
    [
        ((640, 480), ResizeConfig(), (1067, 800)),  # 480 -> 800, 640 * 5/3 = 1066.67 rounds up
        ((480, 640), ResizeConfig(), (800, 1067)),
        ((2000, 500), ResizeConfig(), (1333, 333)),  # long side capped: 500 * 1333/2000 = 333.25
        ((1333, 800), ResizeConfig(), (1333, 800)),  # already the right size
        ((100, 50), ResizeConfig(min_size=224, max_size=1000), (448, 224)),
    ],
)
def test_resize_follows_detectron2_shortest_edge_rule(size, spec, expected):
    resized, scale = resize_for_model(Image.new("RGB", size), spec)
    assert resized.size == expected
    assert scale == pytest.approx(min(spec.min_size / min(size), spec.max_size / max(size)))


def test_to_model_tensor_normalises_per_channel():
    image = Image.new("RGB", (5, 4), (255, 0, 128))
    tensor = to_model_tensor(image, MEAN, STD)
    assert tensor.shape == (3, 4, 5) and tensor.dtype == torch.float32
    expected = [(1.0 - MEAN[0]) / STD[0], (0.0 - MEAN[1]) / STD[1], (128 / 255 - MEAN[2]) / STD[2]]
    assert tensor[:, 2, 3].tolist() == pytest.approx(expected, rel=1e-5)


def test_pad_batch_pads_bottom_right_with_zeros_to_a_multiple():
    a = torch.ones(3, 50, 70)
    b = torch.full((3, 65, 40), 2.0)
    batch = pad_batch([a, b], size_divisibility=32)
    assert batch.shape == (2, 3, 96, 96)
    assert torch.equal(batch[0, :, :50, :70], a) and batch[0, :, 50:].abs().sum() == 0
    assert batch[0, :, :, 70:].abs().sum() == 0
    assert torch.equal(batch[1, :, :65, :40], b) and batch[1, :, 65:].abs().sum() == 0
    assert pad_batch([a], size_divisibility=0).shape == (1, 3, 50, 70)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_keeps_order_and_reports_bad_files(tmp_path, workers):
    paths = []
    for index in range(7):
        path = tmp_path / f"img{index}.png"
        if index in (2, 5):
            path.write_bytes(b"garbage")
        else:
            Image.new("RGB", (40 + index, 30), (index * 30, 0, 0)).save(path)
        paths.append(path)

    loader = ImageLoader(
        (p for p in paths), ImageTransform(MEAN, STD, ResizeConfig(32, 64)), workers=workers, lookahead=2,
        keep_original=True,
    )
    results = list(loader)
    assert [r.path for r in results] == paths
    assert [type(r) for r in results] == [
        LoadedImage, LoadedImage, LoadFailure, LoadedImage, LoadedImage, LoadFailure, LoadedImage,
    ]
    assert results[2].message.startswith(f"{paths[2]}: ")
    first = results[0]
    assert first.original_size == (40, 30) and first.image.size == (40, 30)
    assert first.tensor.shape == (3, 32, 43) and first.scale == pytest.approx(32 / 30)
    red = (results[3].image.getpixel((0, 0))[0] / 255 - MEAN[0]) / STD[0]
    assert results[3].tensor[0].mean().item() == pytest.approx(red, abs=1e-4)


def test_loader_can_stop_early(tmp_path):
    paths = []
    for index in range(10):
        path = tmp_path / f"{index}.png"
        Image.new("RGB", (16, 16)).save(path)
        paths.append(path)
    loader = ImageLoader(paths, ImageTransform(MEAN, STD, ResizeConfig(16, 16)), lookahead=3)
    for count, item in enumerate(loader, start=1):
        if count == 2:
            break
    assert count == 2 and item.path == paths[1] and item.image is None


def test_test_time_resize_is_bilinear_and_pretraining_can_ask_for_bicubic():
    """The original resizes bilinearly at test (detectron2's default) and bicubically in pretraining."""
    image = _gradient(50, 37).convert("RGB")
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8))
    for source in (image, noisy):
        resized, _ = resize_for_model(source, ResizeConfig(74, 200))
        assert resized.tobytes() == source.resize(resized.size, Image.Resampling.BILINEAR).tobytes()
        bicubic, _ = resize_for_model(source, ResizeConfig(74, 200, interpolation="bicubic"))
        assert bicubic.tobytes() == source.resize(resized.size, Image.Resampling.BICUBIC).tobytes()
    assert resized.tobytes() != bicubic.tobytes()


def test_transform_pads_a_lone_image_not_at_all_and_a_batch_to_its_largest():
    """The original's CLIP backbone has no size divisibility at test: no padding to 32."""
    transform = ImageTransform(MEAN, STD, ResizeConfig(45, 100))
    tensor, scale = transform(_gradient(60, 30).convert("RGB"))
    assert tensor.shape == (3, 45, 90) and scale == pytest.approx(1.5)
    assert transform.batch([tensor]).shape == (1, 3, 45, 90)
    assert transform.batch([tensor, torch.zeros(3, 50, 20)]).shape == (2, 3, 50, 90)


def test_in_memory_images_pil_and_arrays(tmp_path):
    transform = ImageTransform(MEAN, STD, ResizeConfig(16, 64))
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    items = [NamedImage("pil", Image.fromarray(pixels)), NamedImage("array", pixels),
             NamedImage("float", pixels / 255.0), NamedImage("gray", pixels[:, :, 0]),
             NamedImage("bad", np.zeros((2, 3, 5)))]
    loaded = list(ImageLoader(items, transform, workers=0))
    assert [str(x.path) for x in loaded] == ["pil", "array", "float", "gray", "bad"]
    assert torch.equal(loaded[0].tensor, loaded[1].tensor)
    assert torch.allclose(loaded[1].tensor, loaded[2].tensor, atol=1e-5)
    assert loaded[3].original_size == (30, 20)
    assert isinstance(loaded[4], LoadFailure) and "shape" in loaded[4].message
