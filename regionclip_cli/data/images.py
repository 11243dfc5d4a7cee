"""Image input: find images, decode them robustly, resize and normalise them for a model.

Real photo folders hold phone pictures stored sideways with an EXIF rotation flag, scans in CMYK,
16-bit microscope frames, screenshots with transparency and the odd truncated download. Every such
file either becomes a correct RGB picture or an `InputError` naming the file, so a batch command can
report it and go on. Decoding runs in a small thread pool ahead of the model (`ImageLoader`), since
Pillow releases the GIL while it decodes.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from regionclip_cli.core.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# Transparent pixels become this mid grey: close to the mean colour models are normalised with,
# so a transparent margin reads as "nothing here" rather than as a white or black object.
TRANSPARENT_BACKGROUND = (128, 128, 128)

# Pillow's own guard (about 89 megapixels, a 9500 x 9500 picture); larger images are refused
# before any pixel is decoded, since a small compressed file can expand to gigabytes.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def find_images(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand files and folders into image paths, and describe the arguments that gave none.

    A file named explicitly is kept whatever its extension (if it is not an image, loading it says
    so); folders are searched recursively for the image extensions, case-insensitively, skipping
    hidden files and folders (macOS `._name.jpg` shadow files are not images). Folder contents come
    back sorted; a path reached twice is listed once. Nothing is opened here.
    """
    found: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    for raw in paths:
        path = Path(raw)
        if path.is_file():
            add(path)
        elif path.is_dir():
            in_folder = sorted(_images_under(path))
            if not in_folder:
                problems.append(f"{path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
            for image_path in in_folder:
                add(image_path)
        else:
            problems.append(f"{path}: no such file or folder")
    return found, problems


def _images_under(folder: Path) -> Iterator[Path]:
    for root, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(root) / name


def load_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `path` fully into an upright 8-bit RGB image, or raise `InputError` naming the file.

    - EXIF orientation is applied, so width and height are those a photo viewer shows.
    - Grayscale, palette, CMYK and YCbCr pictures are converted to RGB.
    - Transparency (RGBA, LA, palette with a transparent colour) is composited onto mid grey
      `TRANSPARENT_BACKGROUND` (128, 128, 128).
    - 16-bit and 32-bit integer images are scaled by their bit depth, inferred from the largest
      value (at least 8 bits): a 12-bit frame stored in 16 bits (maximum 4095) maps 4095 to 255
      instead of looking black, and a full 16-bit one maps 65535 to 255. Float images in [0, 1]
      are multiplied by 255; other float ranges are stretched from their minimum to their maximum.
    - The whole file is decoded here (truncated files fail now, not in the model), and images over
      `max_pixels` pixels are refused before decoding (None disables the guard).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    try:
        with warnings.catch_warnings():
            # We enforce our own limit below; Pillow's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if max_pixels is not None and width * height > max_pixels:
                    raise InputError(
                        f"{path}: image is {width}x{height} = {width * height / 1e6:.0f} megapixels, over the "
                        f"limit of {max_pixels / 1e6:.0f} megapixels (a guard against decompression bombs); "
                        "downscale it first if it is genuine"
                    )
                opened.load()
                image = ImageOps.exif_transpose(opened)
                return _to_rgb(image)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied; check the file's read permissions") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image format Pillow can read; check the file type") from None
    except Image.DecompressionBombError as error:
        raise InputError(f"{path}: refused as a possible decompression bomb ({error})") from None
    except Exception as error:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt data
        reason = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"{path}: cannot decode the image ({reason}); the file may be truncated or corrupt") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
        if low >= 0.0 and high <= 1.0:
            scaled = values * 255.0
        else:
            scaled = (values - low) / max(high - low, 1e-12) * 255.0
    else:
        low = min(float(values.min(initial=0.0)), 0.0)
        values = values - low
        bits = max(8, math.ceil(math.log2(float(values.max(initial=0.0)) + 1.0)))
        scaled = values / (2.0**bits - 1.0) * 255.0
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")


# Test-time resizing as detectron2 does by default (the original evaluates that way); RegionCLIP's
# pretraining config asks for bicubic, so pretraining and the pseudo labels made for it use
# PRETRAINING_INTERPOLATION.
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
PRETRAINING_INTERPOLATION = "bicubic"


@dataclass(frozen=True)
class ResizeConfig:
    """detectron2's ResizeShortestEdge: short side to `min_size`, long side at most `max_size`."""

    min_size: int = 800
    max_size: int = 1333
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")


def resized_shape(width: int, height: int, spec: ResizeConfig) -> tuple[int, int, float]:
    """(new width, new height, scale) by detectron2's ResizeShortestEdge rule, sizes rounded half up."""
    scale = spec.min_size / min(width, height)
    if max(width, height) * scale > spec.max_size:
        scale = spec.max_size / max(width, height)
    new_width = max(1, int(width * scale + 0.5))
    new_height = max(1, int(height * scale + 0.5))
    return new_width, new_height, scale


def resize_for_model(image: Image.Image, spec: ResizeConfig = ResizeConfig()) -> tuple[Image.Image, float]:
    """Resize with `spec.interpolation`; input pixels = original pixels x scale (up to rounding)."""
    new_width, new_height, scale = resized_shape(image.width, image.height, spec)
    if (new_width, new_height) == image.size:
        return image, scale
    return image.resize((new_width, new_height), INTERPOLATIONS[spec.interpolation]), scale


def to_model_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[3, H, W] float32: RGB in [0, 1], minus `mean`, divided by `std` (both per channel, 0-1 scale)."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (R, G, B), got {list(mean)} and {list(std)}")
    pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8))
    tensor = pixels.permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)


def pad_batch(tensors: list[torch.Tensor], size_divisibility: int = 32) -> torch.Tensor:
    """Stack [3, H, W] images into [B, 3, Hmax, Wmax], zero-padded at the bottom and right.

    Zero is the mean colour in normalised space. Hmax and Wmax are rounded up to a multiple of
    `size_divisibility` (0 or 1: no rounding) so every stride of the backbone divides them; boxes
    keep their coordinates because padding only adds pixels after the image.
    """
    if not tensors:
        raise ValueError("pad_batch needs at least one image")
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    if size_divisibility > 1:
        height = math.ceil(height / size_divisibility) * size_divisibility
        width = math.ceil(width / size_divisibility) * size_divisibility
    first = tensors[0]
    batch = first.new_zeros((len(tensors), first.shape[0], height, width))
    for index, tensor in enumerate(tensors):
        batch[index, :, : tensor.shape[-2], : tensor.shape[-1]].copy_(tensor)
    return batch


class ImageTransform:
    """The one place an image becomes model input: resize, normalise, pad images into a batch.

    Boxes follow the image through `scale` (input pixels = original pixels x scale); padding adds
    pixels only after the image, so it moves no box. `size_divisibility=0` is the original's
    test-time setting: its CLIP backbone needs no divisibility, so a lone image is not padded at
    all (padding would change what boxes at the right and bottom edges see), and a batch of
    several is padded only to its largest image.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], resize: ResizeConfig = ResizeConfig(),
                 size_divisibility: int = 0):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (R, G, B), got {list(mean)} and {list(std)}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.resize = resize
        self.size_divisibility = size_divisibility

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, float]:
        """An upright RGB picture → ([3, h, w] normalised input, scale from original to input pixels)."""
        resized, scale = resize_for_model(image, self.resize)
        return to_model_tensor(resized, self.mean, self.std), scale

    def batch(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return pad_batch(tensors, self.size_divisibility)


@dataclass(frozen=True)
class NamedImage:
    """An image given in memory (a PIL image or an array) with the name it is reported under."""

    name: str
    image: object


def image_from_array(array: np.ndarray, origin: str) -> Image.Image:
    """[H, W], [H, W, 3] or [H, W, 4] uint8 (or float in [0, 1]) pixels → an RGB picture."""
    array = np.asarray(array)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InputError(f"{origin}: an image array must be [H, W] or [H, W, 3/4], got shape {list(array.shape)}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number):
            raise InputError(f"{origin}: an image array needs numbers, got {array.dtype}")
        values = np.nan_to_num(array.astype(np.float64))
        if values.min(initial=0.0) >= 0.0 and values.max(initial=0.0) <= 1.0:
            values = values * 255.0
        array = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return _to_rgb(Image.fromarray(array))


def decode_input(item: str | os.PathLike | NamedImage, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
                 ) -> tuple[Path, Image.Image]:
    """A path (decoded by `load_image`) or an in-memory image → (the path it is reported as, RGB picture)."""
    if not isinstance(item, NamedImage):
        return Path(item), load_image(item, max_pixels=max_pixels)
    image = item.image
    if isinstance(image, Image.Image):
        return Path(item.name), _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, torch.Tensor):
        raise InputError(f"{item.name}: pass a PIL image, a numpy array or a path, not a torch tensor")
    return Path(item.name), image_from_array(image, item.name)


@dataclass(frozen=True)
class LoadedImage:
    """One decoded image, ready for the model.

    `original_size` is (width, height) after EXIF rotation, the frame boxes are reported in;
    `tensor` is the resized, normalised [3, H, W] input; `scale` maps original pixels to input
    pixels; `image` is the upright RGB original when the loader was asked to keep it (for drawing).
    """

    path: Path
    original_size: tuple[int, int]
    tensor: torch.Tensor
    scale: float
    image: Image.Image | None = None


@dataclass(frozen=True)
class LoadFailure:
    """An image that could not be used; `message` is one line that starts with the path."""

    path: Path
    message: str


class ImageLoader:
    """Decode and prepare images in background threads, yielding them in input order.

    At most `lookahead` images are decoded ahead of the consumer, so memory stays bounded however
    many paths there are (`paths` may be a lazy iterable). Files that fail yield a `LoadFailure`
    in their place and loading goes on. `workers=0` decodes in the calling thread.
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike | NamedImage],
        transform: ImageTransform,
        *,
        workers: int = 2,
        lookahead: int = 4,
        keep_original: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        if workers < 0 or lookahead < 1:
            raise ValueError(f"need workers >= 0 and lookahead >= 1, got {workers} and {lookahead}")
        self.paths = paths
        self.transform = transform
        self.workers = workers
        self.lookahead = lookahead
        self.keep_original = keep_original
        self.max_pixels = max_pixels

    def load(self, item: str | os.PathLike | NamedImage) -> LoadedImage | LoadFailure:
        """Prepare one image; a bad file becomes a `LoadFailure`."""
        try:
            path, original = decode_input(item, max_pixels=self.max_pixels)
        except InputError as error:
            return LoadFailure(Path(item.name if isinstance(item, NamedImage) else item), str(error))
        tensor, scale = self.transform(original)
        return LoadedImage(
            path=path,
            original_size=original.size,
            tensor=tensor,
            scale=scale,
            image=original if self.keep_original else None,
        )

    def __iter__(self) -> Iterator[LoadedImage | LoadFailure]:
        if self.workers == 0:
            for path in self.paths:
                yield self.load(path)
            return
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="regionclip-images") as pool:
            remaining = iter(self.paths)
            pending: deque[Future] = deque()
            try:
                for path in remaining:
                    pending.append(pool.submit(self.load, path))
                    if len(pending) >= self.lookahead:
                        break
                while pending:
                    ready = pending.popleft().result()
                    next_path = next(remaining, None)
                    if next_path is not None:
                        pending.append(pool.submit(self.load, next_path))
                    yield ready
            finally:
                for future in pending:
                    future.cancel()
