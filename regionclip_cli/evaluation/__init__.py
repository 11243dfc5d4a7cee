"""Detection and recognition metrics: COCO/LVIS AP and region top-1 accuracy."""
