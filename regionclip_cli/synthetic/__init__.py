"""The synthetic world: shapes on textures with boxes and captions, and its tiny CLIP teacher.

No model hub or dataset host is reachable where this project is built and tested, so the world
stands in for COCO + a pretrained CLIP: `world` renders images with COCO annotations and
human-style captions deterministically from a seed, `teacher` trains the world-tiny CLIP on them.
"""
