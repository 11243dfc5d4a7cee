"""The `concepts` stage end to end: count → select → (embed) → write, one call.

Kept apart from the command so a Python user gets the same pool without the CLI, and the command
only parses options and renders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from regionclip_cli.stages.concepts.corpus import Malformed, check_inputs
from regionclip_cli.stages.concepts.embed import (
    EMBEDDINGS_FILE,
    EmbedConfig,
    embed_pool,
    load_embedder,
    model_from_inputs,
)
from regionclip_cli.stages.concepts.pool import PoolEntry, pool_document, select_concepts, vocabulary_index, write_pool
from regionclip_cli.stages.concepts.stream import CountResult, CountConfig, count_concepts
from regionclip_cli.core.errors import RegionclipError

CHECKPOINT_FILE = "concepts.checkpoint.json"


@dataclass(frozen=True)
class ConceptsConfig:
    captions: Sequence[Path]
    out_dir: Path
    counting: CountConfig = field(default_factory=CountConfig)
    max_concepts: int | None = None
    vocab_filter: str | None = None
    embed: EmbedConfig | None = field(default_factory=EmbedConfig)
    """None: write names and counts only (--no-embed)."""
    overwrite: bool = False
    """Replace a pool in `out_dir` counted from other inputs or settings (else: refused)."""


@dataclass
class ConceptReport:
    entries: list[PoolEntry]
    counting: CountResult
    missing_inputs: list[str]
    files: list[Path]
    model_identity: str | None

    @property
    def failed_inputs(self) -> int:
        """Missing or unreadable files plus malformed lines: each was skipped, the rest used."""
        counts = self.counting.counts
        return len(self.missing_inputs) + len(counts.unreadable) + counts.malformed


@dataclass
class Callbacks:
    on_malformed: Callable[[Malformed], None] = lambda line: None
    on_unreadable: Callable[[str], None] = lambda reason: None
    on_resume: Callable[[int], None] = lambda captions: None
    on_progress: Callable[[int], None] = lambda captions: None
    on_model: Callable[[str, str], None] = lambda model, origin: None
    """Called when the embedding model was taken from the inputs: (model, where it came from)."""


def build_concept_pool(job: ConceptsConfig, callbacks: Callbacks = Callbacks(),
                       *, progress: bool = True) -> ConceptReport:
    """Count concepts over the captions (resuming OUT's checkpoint), keep the pool, write it."""
    readable, missing = check_inputs(job.captions)
    for reason in missing:
        callbacks.on_unreadable(reason)
    if not readable:
        raise RegionclipError("no readable caption files: " + "; ".join(missing or ["none given"]))
    vocabulary = vocabulary_index(job.vocab_filter) if job.vocab_filter else None
    embedder = None
    if job.embed is not None:
        settings, origin = model_from_inputs(job.embed, readable, job.out_dir)
        if origin is not None:
            callbacks.on_model(settings.model, origin)
        embedder = load_embedder(settings)
    job.out_dir.mkdir(parents=True, exist_ok=True)

    result = count_concepts(
        readable, job.counting, checkpoint=job.out_dir / CHECKPOINT_FILE,
        on_malformed=callbacks.on_malformed, on_unreadable=callbacks.on_unreadable,
        on_resume=callbacks.on_resume, on_progress=callbacks.on_progress, overwrite=job.overwrite,
    )
    if result.counts.captions == 0:
        raise RegionclipError("no captions could be read from the inputs: "
                              + "; ".join(result.counts.unreadable or [str(p) for p in readable]))
    entries = select_concepts(result.counts, job.counting.min_count, job.max_concepts, vocabulary)

    files, identity, embeddings_name = [], None, None
    if embedder is not None:
        path = embed_pool([e.name for e in entries], embedder, job.out_dir, progress=progress)
        files.append(path)
        identity = embedder.identity
        embeddings_name = path.name
    else:
        # an embeddings file from an earlier run would no longer match concepts.txt
        (job.out_dir / EMBEDDINGS_FILE).unlink(missing_ok=True)
    document = pool_document(entries, result, job.counting, max_concepts=job.max_concepts,
                             vocab_filter=job.vocab_filter, embeddings=embeddings_name)
    document["model_identity"] = identity
    document["templates"] = embedder.templates if embedder is not None else None
    files[:0] = write_pool(job.out_dir, document)
    return ConceptReport(entries, result, missing, files, identity)
