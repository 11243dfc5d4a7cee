"""Pictures of pseudo-labelled images: the most confident kept regions with their concepts."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from regionclip_cli.core.errors import InputError


def draw_labelled_records(records: Iterable[dict], out_dir: Path, *, limit: int, regions: int = 12) -> int:
    """Draw up to `limit` images' `regions` most confident non-overlapping kept regions; returns the count."""
    from regionclip_cli.data.images import load_image
    from regionclip_cli.data.pictures import draw_detections, save_picture
    from regionclip_cli.stages.regions import best_separated

    written = 0
    for record in records:
        if written >= limit:
            break
        if "error" in record:
            continue
        try:
            image = load_image(record["file"])
        except InputError:
            continue
        kept = [{"box": r["box"], "label": r["concept"], "score": r["score"]} for r in record["regions"] if r["keep"]]
        detections = best_separated(kept, 0.0)[:regions]
        picture = draw_detections(image, detections, score_threshold=0.0)
        save_picture(picture, out_dir / f"{written:03d}_{Path(record['file']).stem}.jpg")
        written += 1
    return written
