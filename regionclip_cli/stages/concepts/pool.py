"""From counts to a concept pool: keep the frequent concepts, optionally only a vocabulary's, and
write `concepts.json` (names, counts, examples, settings, inputs) and `concepts.txt`.

The pool is ordered by count (most frequent first, ties by name) so `--max-concepts N` keeps the
N most frequent and the file reads as a frequency table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from regionclip_cli import __version__
from regionclip_cli.core.atomic import write_json, write_text
from regionclip_cli.stages.concepts.corpus import TEXT_NORMALISATION
from regionclip_cli.stages.concepts.counts import ConceptCounts
from regionclip_cli.stages.concepts.stream import CountResult, CountConfig

POOL_FORMAT = "regionclip-concepts"
POOL_VERSION = 1


@dataclass(frozen=True)
class PoolEntry:
    name: str
    count: int
    examples: tuple[dict, ...]
    vocabulary_name: str | None = None
    """With --vocab-filter: the vocabulary class the concept matched (by name or synonym)."""


def _normalise(name: str) -> str:
    return " ".join(name.lower().split())


def vocabulary_index(spec: str) -> dict[str, str]:
    """`--vocab-filter`: every lower-cased name and synonym → its class name.

    Accepts what `--vocab` accepts elsewhere (lvis, coco, coco-ovd, world, a file, 'a,b,c'); LVIS
    contributes its synonyms ('spray can' → 'aerosol can').
    """
    from regionclip_cli.data.vocab import load_vocabulary

    vocabulary = load_vocabulary(spec)
    index: dict[str, str] = {}
    synonyms = vocabulary.synonyms or tuple(() for _ in vocabulary.names)
    for name, alternatives in zip(vocabulary.names, synonyms):
        for form in (name, *alternatives):
            index.setdefault(_normalise(re.sub(r"_", " ", form)), name)
    return index


def select_concepts(counts: ConceptCounts, min_count: int, max_concepts: int | None = None,
                    vocabulary: dict[str, str] | None = None) -> list[PoolEntry]:
    """Concepts seen at least `min_count` times, most frequent first, at most `max_concepts`."""
    kept = [(name, count) for name, count in counts.counts.items()
            if count >= min_count and (vocabulary is None or name in vocabulary)]
    kept.sort(key=lambda item: (-item[1], item[0]))
    if max_concepts is not None:
        kept = kept[:max_concepts]
    return [PoolEntry(name, count, tuple(counts.examples.get(name, ())),
                      vocabulary.get(name) if vocabulary is not None else None)
            for name, count in kept]


def pool_document(entries: Sequence[PoolEntry], result: CountResult, settings: CountConfig,
                  *, max_concepts: int | None, vocab_filter: str | None,
                  embeddings: str | None) -> dict:
    counts = result.counts
    concepts = []
    for entry in entries:
        item = {"name": entry.name, "count": entry.count, "examples": list(entry.examples)}
        if entry.vocabulary_name is not None:
            item["vocabulary_name"] = entry.vocabulary_name
        concepts.append(item)
    return {
        "format": POOL_FORMAT,
        "version": POOL_VERSION,
        "settings": {
            "spacy_model": settings.parse.spacy_model,
            "spacy_pipeline": result.spacy_pipeline,
            "min_count": settings.min_count,
            "max_concepts": max_concepts,
            "vocab_filter": vocab_filter,
            "stop_words": sorted(settings.parse.stop_words),
            "text_normalisation": TEXT_NORMALISATION,
            "count": "captions mentioning the concept",
        },
        "regionclip_version": __version__,
        "inputs": [identity.to_json() for identity in result.inputs],
        "captions": counts.captions,
        "malformed_lines": counts.malformed,
        "unreadable_files": list(counts.unreadable),
        "distinct_concepts": len(counts.counts),
        "embeddings": embeddings,
        "concepts": concepts,
    }


def write_pool(out_dir: Path, document: dict) -> tuple[Path, Path]:
    json_path, text_path = out_dir / "concepts.json", out_dir / "concepts.txt"
    write_json(json_path, document, indent=1)
    write_text(text_path, "".join(f"{item['name']}\n" for item in document["concepts"]))
    return json_path, text_path
