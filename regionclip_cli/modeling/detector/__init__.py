"""The open-vocabulary detector: Faster R-CNN C4 with a CLIP box head and a swappable vocabulary."""
