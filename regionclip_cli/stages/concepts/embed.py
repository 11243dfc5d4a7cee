"""The pool's text embeddings, saved with the identity of the model that made them.

`pseudolabel` and `pretrain` score regions against these embeddings with a teacher; a pool
embedded by another model lives in another space, so the file records the model identity and the
templates, and those stages refuse a mismatch (`regionclip_cli.modeling.text.check_matches`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

EMBEDDINGS_FILE = "concept_embeddings.pt"


@dataclass(frozen=True)
class EmbedSettings:
    model: str | None = None  # None: RN50, or the model a weights checkpoint names
    pretrained: str | None = None
    weights: Path | None = None
    templates: str = "ensemble"
    device: str = "auto"
    cache_dir: Path | None = None


@dataclass
class Embedder:
    """A loaded text encoder and its prompts, made before any caption is parsed so a wrong
    --model/--weights/--templates fails in seconds, not after hours of parsing."""

    clip: object
    templates: list[str]
    cache_dir: Path | None

    @property
    def identity(self) -> str:
        return self.clip.identity


def load_embedder(settings: EmbedSettings) -> Embedder:
    from regionclip_cli.core.devices import resolve_device
    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.modeling.text import resolve_templates

    templates = resolve_templates(settings.templates)
    clip = load_clip(settings.model, pretrained=settings.pretrained, weights=settings.weights,
                     device=resolve_device(settings.device))
    return Embedder(clip, templates, settings.cache_dir)


def embed_pool(names: Sequence[str], embedder: Embedder, out_dir: Path, *, progress: bool = True) -> Path:
    """Embed `names` (one prompt per template, averaged) into OUT/concept_embeddings.pt."""
    from regionclip_cli.core.errors import RegionclipError
    from regionclip_cli.modeling.text import embed_names, save_text_embeddings

    if not names:
        raise RegionclipError("the concept pool is empty, nothing to embed: lower --min-count, "
                              "or use --no-embed")
    embeddings = embed_names(embedder.clip, list(names), embedder.templates,
                             cache_dir=embedder.cache_dir, progress=progress)
    path = out_dir / EMBEDDINGS_FILE
    save_text_embeddings(path, list(names), embeddings, embedder.clip, embedder.templates)
    return path
