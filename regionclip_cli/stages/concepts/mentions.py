"""Which pool concepts an image's own captions name: the candidates of caption-restricted labels.

With `pretrain`'s `pseudo_labels.candidates: captions` (or `pseudolabel --captions`), the teacher
names a region only with concepts that the captions of its image mention, instead of the whole
pool (the original's rule). Captions are parsed by the concept parser that built the pool (its
spaCy model, read from the `concepts.json` beside the embeddings), without stop words: whatever
the parser yields is intersected with the pool, so "three discs" names the concept "disc" however
the pool was filtered. Parsing runs in the thread that builds the batch (spaCy pipelines are not
thread-safe, so never in the loader pool) and is cached: after the first epoch it costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from regionclip_cli.data.captions import CaptionedImage


def pool_spacy_model(embeddings: Path) -> str:
    """The spaCy model the pool was parsed with: `concepts.json`'s, else the default."""
    from regionclip_cli.stages.concepts.parse import DEFAULT_SPACY_MODEL

    record = Path(embeddings).with_name("concepts.json")
    try:
        return json.loads(record.read_text(encoding="utf-8"))["settings"]["spacy_model"]
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_SPACY_MODEL


class CaptionMentions:
    """Pool indices named by each image's captions; an image that names none gets an empty tensor."""

    def __init__(self, items: Sequence[CaptionedImage], concept_names: Sequence[str], spacy_model: str):
        from regionclip_cli.stages.concepts.parse import ConceptParser, ParseConfig

        self.items = items
        self.index = {name: i for i, name in enumerate(concept_names)}
        self._cache: dict[int, torch.Tensor] = {}
        self._parser = ConceptParser(ParseConfig(spacy_model=spacy_model, stop_words=frozenset()))

    def _parse(self, indices: list[int]) -> None:
        texts = [caption for i in indices for caption in self.items[i].captions]
        parsed = self._parser.parse(texts)
        start = 0
        for i in indices:
            count = len(self.items[i].captions)
            named = {self.index[c] for concepts in parsed[start:start + count] for c in concepts if c in self.index}
            self._cache[i] = torch.tensor(sorted(named), dtype=torch.long)
            start += count

    def for_images(self, indices: Sequence[int]) -> list[torch.Tensor]:
        missing = sorted({i for i in indices if i not in self._cache})
        if missing:
            self._parse(missing)
        return [self._cache[i] for i in indices]


def mention_mask(named: torch.Tensor, pool_size: int) -> torch.Tensor:
    """[K] the concepts a region of this image may be labelled with: the mentioned ones, or the
    whole pool where the captions name none of the pool's concepts."""
    if len(named) == 0:
        return torch.ones(pool_size, dtype=torch.bool)
    return torch.zeros(pool_size, dtype=torch.bool).index_fill_(0, named, True)


def candidate_mask(mentioned: Sequence[torch.Tensor], counts: Sequence[int], pool_size: int,
                   device: torch.device) -> torch.Tensor:
    """[N regions, K] `mention_mask` of each region's image, for images with `counts` regions."""
    rows = [mention_mask(named, pool_size).expand(count, pool_size)
            for named, count in zip(mentioned, counts, strict=True)]
    if not rows:
        return torch.zeros((0, pool_size), dtype=torch.bool, device=device)
    return torch.cat(rows).to(device)
