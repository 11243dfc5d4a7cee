"""The pool's text embeddings, saved with the identity of the model that made them.

`pseudolabel` and `pretrain` score regions against these embeddings with a teacher; a pool
embedded by another model lives in another space, so the file records the model identity and the
templates, and those stages refuse a mismatch (`regionclip_cli.modeling.text.check_matches`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from regionclip_cli.core.errors import RegionclipError

EMBEDDINGS_FILE = "concept_embeddings.pt"
POOL_FILE = "concepts.json"
WORLD_DESCRIPTION = "regionclip synthetic world"  # `info.description` of a world's annotations.json
WORLD_MODEL = "world-tiny"
_LARGEST_WORLD_ANNOTATIONS = 64 << 20  # bytes; a bigger annotations.json is no synthetic world


@dataclass(frozen=True)
class EmbedConfig:
    model: str | None = None  # None: the model the inputs name (model_from_inputs), else RN50
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


def _is_world_captions(path: Path) -> bool:
    annotations = path.parent / "annotations.json"
    try:
        if annotations.stat().st_size > _LARGEST_WORLD_ANNOTATIONS:
            return False
        info = json.loads(annotations.read_text(encoding="utf-8")).get("info") or {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False
    return isinstance(info, dict) and info.get("description") == WORLD_DESCRIPTION


def _settings_from_identity(settings: EmbedConfig, identity: str, origin: str) -> EmbedConfig:
    """The --model/--pretrained that reproduce a recorded model identity ("name@source")."""
    from regionclip_cli.modeling.clip import file_sha256, shipped_weights

    name, _, source = identity.partition("@")
    if source.startswith("pretrained:"):
        return replace(settings, model=name, pretrained=source[len("pretrained:"):])
    shipped = shipped_weights(name)
    if shipped is not None and source == f"sha256:{file_sha256(shipped)[:16]}":
        return replace(settings, model=name)
    raise RegionclipError(
        f"{origin} was embedded with {identity} (local weights); pass the same --weights FILE, "
        "or --model/--pretrained to embed the pool with another model"
    )


def model_from_inputs(settings: EmbedConfig, captions: Sequence[Path],
                      out_dir: Path) -> tuple[EmbedConfig, str | None]:
    """Without --model/--weights/--pretrained, the model the inputs name, and where it came from.

    A rerun into a folder whose pool was embedded keeps that model (its embeddings stay in the
    space pseudolabel and pretrain check against); captions of a synthetic world (a
    captions.jsonl beside the world's annotations.json) are embedded by the world's teacher.
    Otherwise the settings are returned unchanged (load_clip's default, RN50).
    """
    if settings.model or settings.weights or settings.pretrained:
        return settings, None
    pool = out_dir / POOL_FILE
    try:
        identity = json.loads(pool.read_text(encoding="utf-8")).get("model_identity")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        identity = None
    if isinstance(identity, str) and "@" in identity:
        return _settings_from_identity(settings, identity, str(pool)), f"the pool already in {pool}"
    if captions and all(_is_world_captions(Path(p)) for p in captions):
        return replace(settings, model=WORLD_MODEL), "the synthetic world the captions come from"
    return settings, None


def load_embedder(settings: EmbedConfig) -> Embedder:
    from regionclip_cli.core.devices import resolve_device
    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.modeling.text import resolve_templates

    templates = resolve_templates(settings.templates)
    clip = load_clip(settings.model, pretrained=settings.pretrained, weights=settings.weights,
                     device=resolve_device(settings.device))
    return Embedder(clip, templates, settings.cache_dir)


def embed_pool(names: Sequence[str], embedder: Embedder, out_dir: Path, *, progress: bool = True) -> Path:
    """Embed `names` (one prompt per template, averaged) into OUT/concept_embeddings.pt."""
    from regionclip_cli.modeling.text import embed_names, save_text_embeddings

    if not names:
        raise RegionclipError("the concept pool is empty, nothing to embed: lower --min-count, "
                              "or use --no-embed")
    embeddings = embed_names(embedder.clip, list(names), embedder.templates,
                             cache_dir=embedder.cache_dir, progress=progress)
    path = out_dir / EMBEDDINGS_FILE
    save_text_embeddings(path, list(names), embeddings, embedder.clip, embedder.templates)
    return path
