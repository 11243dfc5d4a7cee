"""Detection pictures: colours per label, filtering, readable labels, atomic saving."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.pictures import draw_detections, label_colour, save_picture


def _changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return (np.asarray(before, dtype=int) != np.asarray(after, dtype=int)).any(axis=2)


def test_label_colour_is_stable_and_distinct():
    assert label_colour("dog") == label_colour("dog")
    assert label_colour("dog") != label_colour("cat")
    assert all(0 <= c <= 255 for c in label_colour("zebra"))


def test_box_outline_uses_the_label_colour_and_input_is_untouched():
    image = Image.new("RGB", (300, 200), (0, 0, 0))
    detections = [{"box": [50, 80, 250, 180], "label": "dog", "category_id": 18, "score": 0.9}]
    picture = draw_detections(image, detections)
    assert image.getpixel((150, 180)) == (0, 0, 0)  # the original is not drawn on
    assert picture.getpixel((150, 180)) == label_colour("dog")  # bottom edge of the box
    assert picture.getpixel((150, 130)) == (0, 0, 0)  # inside the box stays clear
    changed = _changed(image, picture)
    # The label sits on a filled strip just above the box's top-left corner.
    assert changed[60:79, 52:80].mean() > 0.5


def test_label_goes_inside_a_box_touching_the_top():
    image = Image.new("RGB", (200, 200), (0, 0, 0))
    picture = draw_detections(image, [{"box": [20, 0, 180, 150], "label": "cat", "score": 0.8}])
    assert _changed(image, picture)[2:12, 25:50].mean() > 0.5


def test_threshold_and_max_boxes_filter_by_score():
    image = Image.new("RGB", (400, 400), (0, 0, 0))
    detections = [
        {"box": [10, 300, 100, 390], "label": "low", "score": 0.1},
        {"box": [150, 300, 250, 390], "label": "mid", "score": 0.5},
        {"box": [300, 300, 390, 390], "label": "high", "score": 0.95},
    ]
    picture = draw_detections(image, detections, score_threshold=0.3, max_boxes=1)
    changed = _changed(image, picture)
    assert changed[:, 290:].any()  # only the best box is drawn
    assert not changed[:, :280].any()
    untouched = draw_detections(image, detections, score_threshold=0.99)
    assert not _changed(image, untouched).any()


def test_grayscale_input_and_box_outside_the_image_do_not_fail():
    image = Image.new("L", (50, 40), 10)
    picture = draw_detections(image, [{"box": [-20, -20, 80, 70], "label": "x", "score": 0.5}])
    assert picture.mode == "RGB" and picture.size == (50, 40)


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".png", ".webp"])
def test_save_picture_writes_the_format_of_the_suffix(tmp_path, suffix):
    path = tmp_path / "out" / f"picture{suffix}"
    save_picture(Image.new("RGBA", (20, 10), (255, 0, 0, 255)), path)
    with Image.open(path) as saved:
        expected = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[suffix.lower()]
        assert saved.format == expected and saved.size == (20, 10)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_save_picture_rejects_unknown_suffix(tmp_path):
    with pytest.raises(RegionclipError, match="use .jpg or .png"):
        save_picture(Image.new("RGB", (4, 4)), tmp_path / "picture.xyz")
