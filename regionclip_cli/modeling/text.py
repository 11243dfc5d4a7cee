"""The text side: prompt templates, class/concept embeddings, and their on-disk cache.

RegionCLIP embeds each name with CLIP's frozen text encoder averaged over prompts: `"{}."` plus the
80 ImageNet templates of CLIP, the mean taken over *un-normalised* text features, then
L2-normalised. Embedding the 1203 LVIS names × 81 prompts takes minutes on a CPU, so results are
cached on disk under a key made of the model's identity, the names and the templates.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from regionclip_cli.core.atomic import atomic_path
from regionclip_cli.modeling.checkpoints import read_torch_file
from regionclip_cli.core.errors import RegionclipError

if TYPE_CHECKING:
    from regionclip_cli.modeling.clip import LoadedClip

SINGLE_TEMPLATE = "a photo of a {}."
# Embedding widths of the CLIPs users meet, for errors about files made with another model.
WIDTHS = "1024 = RN50, 640 = RN50x4, 512 = RN101/ViT-B, 768 = RN50x16"


def ensemble_templates() -> list[str]:
    """`"{}."` followed by CLIP's 80 ImageNet templates (as shipped by open_clip)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return ["{}."] + [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


def resolve_templates(spec: str) -> list[str]:
    """`--templates`: 'ensemble' (81 prompts), 'single' ("a photo of a {}."), or a file.

    A file holds one template per line, each with exactly one `{}` where the name goes.
    """
    if spec == "ensemble":
        return ensemble_templates()
    if spec == "single":
        return [SINGLE_TEMPLATE]
    path = Path(spec)
    if not path.is_file():
        raise RegionclipError(
            f"--templates {spec!r}: use 'ensemble', 'single' or a file with one template per line"
        )
    templates = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.count("{}") != 1:
            raise RegionclipError(f"{path}:{number}: a template needs exactly one '{{}}' for the name")
        templates.append(line)
    if not templates:
        raise RegionclipError(f"{path}: no templates in the file")
    return templates


def default_cache_dir() -> Path:
    """`$REGIONCLIP_CACHE`, else `$XDG_CACHE_HOME/regionclip`, else `~/.cache/regionclip`."""
    if os.environ.get("REGIONCLIP_CACHE"):
        return Path(os.environ["REGIONCLIP_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "regionclip"


def _cache_key(identity: str, names: Sequence[str], templates: Sequence[str]) -> str:
    payload = json.dumps({"model": identity, "names": list(names), "templates": list(templates)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@torch.inference_mode()
def _encode(clip: LoadedClip, names: Sequence[str], templates: Sequence[str], batch_size: int,
            progress: bool) -> torch.Tensor:
    from regionclip_cli.core.progress import progress_bar

    prompts = [template.format(name) for name in names for template in templates]
    features = []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("embedding prompts", total=len(prompts), unit="prompt", status="")
        for start in range(0, len(prompts), batch_size):
            tokens = clip.tokenizer(prompts[start:start + batch_size]).to(clip.device)
            features.append(clip.model.encode_text(tokens).float().cpu())
            bar.advance(task, len(tokens))
    per_prompt = torch.cat(features).view(len(names), len(templates), -1)
    return torch.nn.functional.normalize(per_prompt.mean(dim=1), dim=-1)


def embed_names(
    clip: LoadedClip,
    names: Sequence[str],
    templates: Sequence[str],
    *,
    cache_dir: Path | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> torch.Tensor:
    """[N, D] float32 L2-normalised embeddings of `names`, from the cache when possible.

    `cache_dir=None` uses `default_cache_dir()`. A corrupt or mis-shaped cache entry is
    recomputed, never trusted.
    """
    if not names:
        raise RegionclipError("nothing to embed: the name list is empty")
    if not getattr(clip, "has_text_tower", True):
        raise RegionclipError(
            f"{clip.identity}: the weights hold no text tower, so names cannot be embedded; pass the "
            "class embeddings with --class-embeddings FILE")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = cache_dir / "text" / f"{_cache_key(clip.identity, names, templates)}.pt"
    if entry.is_file():
        try:
            cached = torch.load(entry, map_location="cpu", weights_only=True)
            if cached.shape == (len(names), clip.embed_dim):
                return cached
        except Exception:
            pass
    embeddings = _encode(clip, names, templates, batch_size, progress)
    try:
        with atomic_path(entry) as tmp:
            torch.save(embeddings, tmp)
    except OSError:
        pass  # a read-only cache directory must not break the run; we just recompute next time
    return embeddings


@dataclass
class TextEmbeddings:
    """A saved embedding table (vocabulary or concept pool) and what produced it."""

    names: list[str]
    embeddings: torch.Tensor
    model_identity: str
    model_name: str
    templates: list[str]


def save_text_embeddings(path: str | os.PathLike, names: Sequence[str], embeddings: torch.Tensor,
                         clip: LoadedClip, templates: Sequence[str]) -> None:
    payload = {
        "format": "regionclip-text-embeddings",
        "version": 1,
        "names": list(names),
        "embeddings": embeddings.detach().float().cpu(),
        "model_identity": clip.identity,
        "model_name": clip.name,
        "templates": list(templates),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_text_embeddings(path: str | os.PathLike) -> TextEmbeddings:
    payload = read_torch_file(path, "embeddings")
    if not isinstance(payload, dict) or payload.get("format") != "regionclip-text-embeddings":
        raise RegionclipError(f"{path}: not a regionclip text-embeddings file")
    return TextEmbeddings(
        names=list(payload["names"]),
        embeddings=payload["embeddings"],
        model_identity=str(payload["model_identity"]),
        model_name=str(payload["model_name"]),
        templates=list(payload["templates"]),
    )


def check_matches(table: TextEmbeddings, clip: LoadedClip, origin: str = "embeddings") -> None:
    """Embeddings from another model live in another space: refuse them with one clear line."""
    width = table.embeddings.shape[-1]
    if width != clip.embed_dim:
        raise RegionclipError(
            f"{origin}: embedding width {width} does not match model {clip.name} "
            f"(width {clip.embed_dim}); re-embed with the same --model/--weights"
        )
    if table.model_identity != clip.identity:
        raise RegionclipError(
            f"{origin}: embedded with {table.model_identity}, but the model is {clip.identity}; "
            "re-embed with the same --model/--weights"
        )


def read_class_embeddings(path: str | os.PathLike, clip: LoadedClip, vocabulary) -> torch.Tensor:
    """[K, D] L2-normalised embeddings from a file, one row per vocabulary class, in its order.

    The file holds a plain [K, D] tensor (the original RegionCLIP's class and concept embedding
    files, un-normalised) or a regionclip text-embeddings file whose names must be the vocabulary's.
    """
    payload = read_torch_file(path, "class embeddings")
    origin = f"--class-embeddings {path}"
    if isinstance(payload, dict) and payload.get("format") == "regionclip-text-embeddings":
        if list(payload["names"]) != list(vocabulary.names):
            raise RegionclipError(f"{origin}: embeds other names than --vocab {vocabulary.name}")
        payload = payload["embeddings"]
    if not isinstance(payload, torch.Tensor) or payload.dim() != 2 or not payload.is_floating_point():
        raise RegionclipError(f"{origin}: expected a [classes, width] float tensor")
    count, width = payload.shape
    if count != len(vocabulary):
        raise RegionclipError(
            f"{origin}: {count} class embeddings, but --vocab {vocabulary.name} has {len(vocabulary)} classes; "
            "pass the vocabulary the file was made for, in its order")
    if width != clip.embed_dim:
        raise RegionclipError(
            f"{origin}: embeddings are {width}-d but {clip.name} embeds regions in {clip.embed_dim}-d "
            f"({WIDTHS}); pass the --model the file was made with")
    return torch.nn.functional.normalize(payload.float(), dim=-1)
