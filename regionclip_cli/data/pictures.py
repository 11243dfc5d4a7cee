"""Pictures of detections: boxes and labels drawn onto the original image.

Each label keeps one colour across every picture of a run (and across runs), so a reader can
scan a folder of results for "dog" by colour. Sizes follow the image, so labels stay legible on a
thumbnail and on a 4000-pixel photo alike. Several classes on one box get their labels stacked,
best first, instead of drawn over each other.

Text is drawn glyph by glyph from a chain of fonts, so a class name in a script one font lacks
(CJK, say) comes from the next font that has it instead of empty boxes: $REGIONCLIP_FONT (a
.ttf/.otf/.ttc the user names), wide-coverage fonts where systems usually keep them (Noto Sans
CJK, DejaVu Sans, PingFang, Microsoft YaHei, Arial Unicode), a font fontconfig finds for the
missing character, and Pillow's built-in font. A label with a character no font here can draw is
written as its category id ("#3") rather than as boxes; `undrawable_labels` names them so a
command can say which font to install.
"""

from __future__ import annotations

import colorsys
import hashlib
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from regionclip_cli.core.atomic import atomic_path
from regionclip_cli.core.errors import RegionclipError

JPEG_QUALITY = 90
FONT_ENV = "REGIONCLIP_FONT"
FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/arialuni.ttf",
    "C:/Windows/Fonts/segoeui.ttf",
)
_NOT_A_CHARACTER = "\U0010ffff"  # never assigned: every font draws its "missing glyph" for it

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


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


def _font_files() -> list[str]:
    named = os.environ.get(FONT_ENV)
    files = [named] if named else []
    return files + [path for path in FONT_CANDIDATES if os.path.isfile(path)]


@lru_cache(maxsize=64)
def _load(path: str | None, size: int) -> Font | None:
    """A font file at `size`, or Pillow's built-in font for `path=None`; None if unusable."""
    try:
        if path is None:
            return ImageFont.load_default(size=size)
        return ImageFont.truetype(path, size=size)
    except (OSError, ValueError):
        return None
    except (TypeError, ImportError, AttributeError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default() if path is None else None


@lru_cache(maxsize=4096)
def _has_glyph(path: str | None, size: int, char: str) -> bool:
    font = _load(path, size)
    if font is None:
        return False
    if char.isspace():
        return True
    try:
        missing = font.getmask(_NOT_A_CHARACTER)
        drawn = font.getmask(char)
    except (UnicodeEncodeError, OSError, ValueError):  # the bitmap font knows Latin-1 only
        return False
    return drawn.size != missing.size or bytes(drawn) != bytes(missing)


@lru_cache(maxsize=1024)
def _fontconfig_file(char: str) -> str | None:
    """A font file fontconfig knows that has `char`, when fontconfig is installed."""
    if shutil.which("fc-list") is None:
        return None
    try:
        found = subprocess.run(["fc-list", f":charset={ord(char):x}", "file"], capture_output=True,
                               text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files = sorted(line.strip().rstrip(":") for line in found.splitlines() if line.strip())
    return files[0] if files else None


def _font_for(char: str, size: int) -> str | None | bool:
    """The first font of the chain that draws `char` (None: the built-in one), or False."""
    for path in _font_files():
        if _has_glyph(path, size, char):
            return path
    if _has_glyph(None, size, char):
        return None
    extra = _fontconfig_file(char)
    if extra is not None and _has_glyph(extra, size, char):
        return extra
    return False


@lru_cache(maxsize=4096)
def _runs(text: str, size: int) -> tuple[tuple[str, Font], ...] | None:
    """`text` cut into runs drawn by one font each; None if some character has no font here."""
    runs: list[tuple[str, str | None]] = []
    for char in text:
        source = _font_for(char, size)
        if source is False:
            return None
        if runs and runs[-1][1] == source:
            runs[-1] = (runs[-1][0] + char, source)
        else:
            runs.append((char, source))
    return tuple((chunk, _load(source, size)) for chunk, source in runs)


def undrawable_labels(labels, size: int = 16) -> list[str]:
    """The labels that contain a character no available font can draw (drawn as '#id')."""
    return [label for label in dict.fromkeys(labels) if _runs(str(label), size) is None]


class _Text:
    """One line of text laid out from font runs on a shared baseline."""

    def __init__(self, runs: tuple[tuple[str, Font], ...], draw: ImageDraw.ImageDraw):
        self.runs = runs
        self.widths = [draw.textlength(chunk, font=font) for chunk, font in runs]
        metrics = [font.getmetrics() if hasattr(font, "getmetrics") else (font.getbbox("Ag")[3], 0)
                   for _, font in runs]
        self.ascent = max(a for a, _ in metrics)
        self.descent = max(d for _, d in metrics)

    @property
    def width(self) -> float:
        return sum(self.widths)

    @property
    def height(self) -> int:
        return self.ascent + self.descent

    def draw(self, draw: ImageDraw.ImageDraw, x: float, top: float, fill) -> None:
        baseline = top + self.ascent
        for (chunk, font), width in zip(self.runs, self.widths):
            if isinstance(font, ImageFont.FreeTypeFont):
                draw.text((x, baseline), chunk, fill=fill, font=font, anchor="ls")
            else:
                draw.text((x, baseline - self.ascent), chunk, fill=fill, font=font)
            x += width


def _label_text(detection: dict, size: int, draw: ImageDraw.ImageDraw) -> _Text:
    label = str(detection.get("label", detection.get("category_id", "?")))
    score = f" {float(detection['score']):.2f}" if "score" in detection else ""
    runs = _runs(label + score, size)
    if runs is None:  # no font here draws this script: the id is better than empty boxes
        runs = _runs(f"#{detection.get('category_id', '?')}{score}", size)
    return _Text(runs, draw)


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
    when the box touches the top edge. Detections of one box share its outline and stack their
    labels (best nearest the box), so none hides another.
    """
    picture = image.convert("RGB") if image.mode != "RGB" else image.copy()
    kept = [d for d in detections if float(d.get("score", 1.0)) >= score_threshold]
    kept.sort(key=lambda d: float(d.get("score", 1.0)), reverse=True)
    kept = kept[: max(max_boxes, 0)]
    if not kept:
        return picture

    short_side = min(picture.size)
    line_width = max(1, round(short_side / 300))
    size = max(10, round(short_side / 40))
    draw = ImageDraw.Draw(picture)
    boxes: dict[tuple[float, ...], list[dict]] = {}
    for detection in kept:  # best first within each box
        boxes.setdefault(tuple(round(float(v), 1) for v in detection["box"]), []).append(detection)
    for box, group in reversed(list(boxes.items())):  # the box of the best detection is drawn last
        x1, y1, x2, y2 = box
        draw.rectangle([x1, y1, x2, y2], outline=label_colour(str(group[0].get("label", "?"))), width=line_width)
        pad = max(1, line_width)
        texts = [_label_text(detection, size, draw) for detection in group]
        heights = [text.height + 2 * pad for text in texts]
        above = y1 - sum(heights) >= 0
        ty = y1 if above else max(y1, 0.0)
        for detection, text, height in zip(group, texts, heights):
            colour = label_colour(str(detection.get("label", detection.get("category_id", "?"))))
            text_w = text.width + 2 * pad
            tx = min(max(x1, 0.0), max(picture.width - text_w, 0))
            if above:
                ty -= height
            draw.rectangle([tx, ty, tx + text_w - 1, ty + height - 1], fill=colour)  # inclusive ends
            text.draw(draw, tx + pad, ty + pad, _text_colour(colour))
            if not above:
                ty += height
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
