"""Pictures of one held-out image as the teacher and as the student label its boxes, side by side.

Each ground-truth box is drawn with the model's best class for it: green when right, red when
wrong (the true name in brackets). The same boxes, the same prompts: the only difference between
the two halves is the image tower.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from regionclip_cli.core.atomic import atomic_path
from regionclip_cli.data.coco import read_coco
from regionclip_cli.data.images import load_image
from regionclip_cli.evaluation import read_detections
from regionclip_cli.evaluation.region_accuracy import MATCH_IOU, box_iou

RIGHT, WRONG = (40, 170, 60), (210, 40, 40)
HEADER = 26


def _best_labels(path: Path) -> dict[str, dict]:
    """Each image's region records (the best class of every ground-truth box), by file."""
    return {record["file"]: record for record in read_detections(path).regions}


def _panel(image: Image.Image, title: str, boxes, predicted, truth, names) -> Image.Image:
    import numpy as np

    canvas = Image.new("RGB", (image.width, image.height + HEADER), "white")
    canvas.paste(image, (0, HEADER))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    gt_boxes = np.array([t[0] for t in truth], dtype=float).reshape(-1, 4)
    right = 0
    for box, category in zip(boxes, predicted):
        iou = box_iou(np.array([box], dtype=float), gt_boxes)
        if not iou.size or iou.max() < MATCH_IOU:
            continue
        true_category = truth[int(iou.argmax())][1]
        ok = category == true_category
        right += ok
        x1, y1, x2, y2 = box
        colour = RIGHT if ok else WRONG
        draw.rectangle([x1, y1 + HEADER, x2, y2 + HEADER], outline=colour, width=2)
        text = names.get(category, "?") + ("" if ok else f" [{names.get(true_category, '?')}]")
        left, top, width, height = draw.textbbox((x1, y1 + HEADER), text, font=font)
        draw.rectangle([left, top, width, height], fill=colour)
        draw.text((x1, y1 + HEADER), text, fill="white", font=font)
    draw.text((6, 6), f"{title}: {right} of {len(truth)} right", fill="black", font=ImageFont.load_default(size=14))
    return canvas


def side_by_side(annotations: Path, teacher_rows: Path, student_rows: Path, out_dir: Path, *, limit: int) -> list[Path]:
    """Write up to `limit` comparison pictures (the images in annotation order); returns their paths."""
    coco = read_coco(annotations)
    names = {c["id"]: c["name"] for c in coco.categories}
    teacher, student = _best_labels(teacher_rows), _best_labels(student_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth_of: dict[int, list] = {}
    for ann in coco.annotations:
        x, y, w, h = ann["bbox"]
        truth_of.setdefault(ann["image_id"], []).append(([x, y, x + w, y + h], ann["category_id"]))
    written = []
    for image_info in coco.images:
        if len(written) >= limit:
            break
        key = next((k for k in teacher if Path(k).name == Path(image_info["file_name"]).name), None)
        if key is None or key not in student:
            continue
        truth = truth_of.get(int(image_info["id"]), [])
        image = load_image(key)
        left = _panel(image, "teacher", teacher[key]["boxes"], teacher[key]["category_ids"], truth, names)
        right = _panel(image, "student", student[key]["boxes"], student[key]["category_ids"], truth, names)
        pair = Image.new("RGB", (left.width + right.width + 8, left.height), "white")
        pair.paste(left, (0, 0))
        pair.paste(right, (left.width + 8, 0))
        path = out_dir / f"{Path(image_info['file_name']).stem}.png"
        with atomic_path(path) as tmp:
            pair.save(tmp, format="PNG")
        written.append(path)
    return written
