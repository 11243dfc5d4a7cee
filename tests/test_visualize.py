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


def test_several_classes_on_one_box_stack_their_labels():
    # Issue 12.18: labels of classes sharing a box were drawn on top of each other.
    image = Image.new("RGB", (400, 300), (0, 0, 0))
    box = [100, 150, 300, 280]
    one = draw_detections(image, [{"box": box, "label": "dog", "score": 0.9}])
    two = draw_detections(image, [{"box": box, "label": "dog", "score": 0.9},
                                  {"box": box, "label": "cat", "score": 0.6}])
    rows_one = np.flatnonzero(_changed(image, one)[:150, 100:300].any(axis=1))
    rows_two = np.flatnonzero(_changed(image, two)[:150, 100:300].any(axis=1))
    height = rows_one.max() - rows_one.min() + 1
    assert rows_two.max() - rows_two.min() + 1 >= 2 * height - 2  # two strips, one above the other
    pixels = np.asarray(two)
    cat, dog = label_colour("cat"), label_colour("dog")
    cat_rows = np.flatnonzero((pixels[:150, 100:300] == cat).all(axis=2).any(axis=1))
    dog_rows = np.flatnonzero((pixels[:150, 100:300] == dog).all(axis=2).any(axis=1))
    assert dog_rows.min() > cat_rows.max()  # the best label sits nearest the box, the other above it


def test_stacked_labels_go_inside_a_box_at_the_top_edge():
    image = Image.new("RGB", (300, 300), (0, 0, 0))
    picture = draw_detections(image, [{"box": [10, 0, 290, 290], "label": "a", "score": 0.9},
                                      {"box": [10, 0, 290, 290], "label": "b", "score": 0.8}])
    pixels = np.asarray(picture)
    a_rows = np.flatnonzero((pixels[:200, 12:100] == label_colour("a")).all(axis=2).any(axis=1))
    b_rows = np.flatnonzero((pixels[:200, 12:100] == label_colour("b")).all(axis=2).any(axis=1))
    assert a_rows.min() <= 2 and b_rows.min() > a_rows.max() - 1


DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def test_a_character_one_font_lacks_comes_from_the_next(monkeypatch):
    # Issue 13.6: names in scripts the bundled font lacks were drawn as empty boxes.
    import os

    from regionclip_cli.data import pictures

    if not os.path.isfile(DEJAVU):
        pytest.skip("needs DejaVu Sans")
    monkeypatch.delenv(pictures.FONT_ENV, raising=False)
    monkeypatch.setattr(pictures, "FONT_CANDIDATES", (DEJAVU,))
    pictures._runs.cache_clear()
    runs = pictures._runs("Ωmega ☂", 14)
    assert "".join(chunk for chunk, _ in runs) == "Ωmega ☂"
    assert not pictures._has_glyph(None, 14, "Ω") or runs[0][1].path == DEJAVU
    assert pictures.undrawable_labels(["Ωmega"]) == []


def test_a_label_no_font_can_draw_becomes_its_id_not_boxes(monkeypatch):
    from PIL import ImageDraw

    from regionclip_cli.data import pictures

    unassigned = "\U0010fffd\U0010fffd"  # private use: no font has it
    monkeypatch.setattr(pictures, "_fontconfig_file", lambda char: None)
    pictures._runs.cache_clear()
    assert pictures.undrawable_labels([unassigned, "cat"]) == [unassigned]
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    text = pictures._label_text({"label": unassigned, "category_id": 7, "score": 0.9}, 14, draw)
    assert "".join(chunk for chunk, _ in text.runs) == "#7 0.90"


def test_each_picture_is_named_on_its_detections_line(tmp_path):
    # Issue 13.6: two x.png in different folders gave x.jpg and x_2.jpg, with nothing saying which is which.
    import json
    from pathlib import Path

    from regionclip_cli.data.detections import DetectionWriter, ImageDetections

    writer = DetectionWriter(tmp_path / "out", save_pictures=True, save_features=True)
    for folder, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        writer.add(ImageDetections(Path(folder) / "x.png", 8, 8, 1 if folder == "a" else 2, []),
                   picture=Image.new("RGB", (8, 8), colour),
                   boxes=np.zeros((1, 4)), features=np.ones((1, 3)))
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "out" / "detections.jsonl").read_text().splitlines()]
    assert [r["picture"] for r in rows] == ["pictures/x.jpg", "pictures/x_2.jpg"]
    assert [r["features"] for r in rows] == ["features/x.npz", "features/x_2.npz"]
    for row, expected in zip(rows, ((255, 0, 0), (0, 0, 255))):
        with Image.open(tmp_path / "out" / row["picture"]) as saved:
            red, _, blue = saved.convert("RGB").getpixel((4, 4))
            assert (red > 200) == (expected[0] == 255) and (blue > 200) == (expected[2] == 255)
