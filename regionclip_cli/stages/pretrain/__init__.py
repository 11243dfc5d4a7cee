"""Stage 3: region-level language-image pretraining of a student CLIP."""
