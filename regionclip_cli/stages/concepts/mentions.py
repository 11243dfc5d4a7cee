"""Which pool concepts an image's own captions name: the candidates of caption-restricted labels.

With `pretrain`'s `pseudo_labels.candidates: captions` (or `pseudolabel --captions`), the teacher
names a region only with concepts that the captions of its image mention, instead of the whole
pool (the original's rule). Captions are
parsed by the same concept parser that built the pool, so "three discs" names the concept
"disc". Parsing runs once per image, on the main thread (spaCy pipelines are not thread-safe),
and is cached: after the first epoch it costs nothing.
"""

from __future__ import annotations

from typing import Sequence

import torch

from regionclip_cli.data.captions import CaptionedImage


class CaptionMentions:
    """Pool indices named by each image's captions; an image that names none gets an empty tensor."""

    def __init__(self, items: Sequence[CaptionedImage], concept_names: Sequence[str]):
        self.items = items
        self.index = {name: i for i, name in enumerate(concept_names)}
        self._cache: dict[int, torch.Tensor] = {}
        self._parser = None

    def _parse(self, indices: list[int]) -> None:
        from regionclip_cli.stages.concepts.parse import ConceptParser, ParseConfig

        if self._parser is None:
            self._parser = ConceptParser(ParseConfig())
        texts = [caption for i in indices for caption in self.items[i].captions]
        parsed = iter(self._parser.parse(texts))
        for i in indices:
            named = {self.index[c] for _ in self.items[i].captions for c in next(parsed) if c in self.index}
            self._cache[i] = torch.tensor(sorted(named), dtype=torch.long)

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
