"""Pictures of detections: boxes and labels drawn onto the original image.

Each label keeps one colour across every picture of a run (and across runs), so a reader can
scan a folder of results for "dog" by colour. Sizes follow the image, so labels stay legible on a
thumbnail and on a 4000-pixel photo alike. Only Pillow's built-in font is used: nothing to download.
"""

from __future__ import annotations

import colorsys
import hashlib
import os
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from regionclip_cli.core.atomic import atomic_path
from regionclip_cli.core.errors import RegionclipError

JPEG_QUALITY = 90


def label_colour(label: str) -> tuple[int, int, int]:
    """A saturated colour derived from the label's name (a stable hash, not Python's salted one)."""
    digest = hashlib.sha256(label.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "little") / 65536.0
    saturation = 0.65 + 0.35 * digest[2] / 255.0
    value = 0.75 + 0.25 * digest[3] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = background
    luminance = 0.299 * r + 0.587 * g + 0.114 * b
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def draw_detections(
    image: Image.Image,
    detections: list[dict],
    *,
    max_boxes: int = 50,
    score_threshold: float = 0.3,
) -> Image.Image:
    """A copy of `image` with the `max_boxes` best detections scoring at least `score_threshold`.

    Detections are dicts as in our JSONL (`box` [x1, y1, x2, y2] in image pixels, `label`,
    `score`). The best are drawn last so they sit on top; a label goes above its box, or inside it
    when the box touches the top edge.
    """
    picture = image.convert("RGB") if image.mode != "RGB" else image.copy()
    kept = [d for d in detections if float(d.get("score", 1.0)) >= score_threshold]
    kept.sort(key=lambda d: float(d.get("score", 1.0)), reverse=True)
    kept = kept[: max(max_boxes, 0)]
    if not kept:
        return picture

    short_side = min(picture.size)
    line_width = max(1, round(short_side / 300))
    font = _font(max(10, round(short_side / 40)))
    draw = ImageDraw.Draw(picture)
    for detection in reversed(kept):
        x1, y1, x2, y2 = (float(v) for v in detection["box"])
        label = str(detection.get("label", detection.get("category_id", "?")))
        colour = label_colour(label)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line_width)

        text = f"{label} {float(detection['score']):.2f}" if "score" in detection else label
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(1, line_width)
        text_w, text_h = right - left + 2 * pad, bottom - top + 2 * pad
        tx = min(max(x1, 0.0), max(picture.width - text_w, 0))
        ty = y1 - text_h if y1 - text_h >= 0 else max(y1, 0.0)
        draw.rectangle([tx, ty, tx + text_w, ty + text_h], fill=colour)
        draw.text((tx + pad - left, ty + pad - top), text, fill=_text_colour(colour), font=font)
    return picture


def save_picture(image: Image.Image, path: str | os.PathLike) -> None:
    """Write `image` atomically in the format its suffix names (JPEG at quality 90)."""
    path = Path(path)
    format_name = Image.registered_extensions().get(path.suffix.lower())
    if format_name is None or format_name not in Image.SAVE:
        raise RegionclipError(f"{path}: cannot save pictures as '{path.suffix}'; use .jpg or .png")
    options: dict = {}
    if format_name == "JPEG":
        options["quality"] = JPEG_QUALITY
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
    with atomic_path(path) as tmp:
        image.save(tmp, format=format_name, **options)
