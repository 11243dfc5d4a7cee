"""The data layer: images and their transform, proposals and box files, vocabularies, captions, on-disk record layouts."""
