"""Tensors in, tensors out: CLIP loading, the region encoder, text embeddings, scoring, losses."""
