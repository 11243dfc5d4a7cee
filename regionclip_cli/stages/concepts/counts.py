"""Concept counts, their example captions, and the checkpoint that lets a long run resume.

A count is the number of captions that mention a concept. Memory stays bounded on a corpus of
millions: counts grow with the number of distinct concepts, not captions, and example captions are
kept only for concepts that reach the minimum count (the captions of their occurrences just below
it), never for the long tail that will be dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from regionclip_cli.core.atomic import write_json
from regionclip_cli.stages.concepts.corpus import Caption

CHECKPOINT_FORMAT = "regionclip-concept-counts"
CHECKPOINT_VERSION = 1


@dataclass
class ConceptCounts:
    """Running totals up to `position`: every caption before it is counted, none after."""

    min_count: int
    examples_per_concept: int = 3
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    captions: int = 0
    malformed: int = 0
    unreadable: list[str] = field(default_factory=list)
    position: tuple[int, int] = (0, 0)

    @property
    def _examples_from(self) -> int:
        """The occurrence from which examples are kept, so a concept with exactly `min_count`
        mentions still gets its full set."""
        return max(1, self.min_count - self.examples_per_concept + 1)

    def add(self, caption: Caption, concepts: tuple[str, ...]) -> None:
        self.captions += 1
        self.position = (caption.file_index, caption.record + 1)
        first_kept = self._examples_from
        for concept in concepts:
            seen = self.counts[concept] + 1
            self.counts[concept] = seen
            if first_kept <= seen < first_kept + self.examples_per_concept:
                example = {"caption": caption.text}
                if caption.image is not None:
                    example["image"] = caption.image
                self.examples.setdefault(concept, []).append(example)

    def to_json(self) -> dict:
        return {
            "captions": self.captions,
            "malformed": self.malformed,
            "unreadable": self.unreadable,
            "position": list(self.position),
            "counts": dict(self.counts),
            "examples": self.examples,
        }

    @classmethod
    def from_json(cls, data: dict, min_count: int, examples_per_concept: int) -> ConceptCounts:
        return cls(
            min_count=min_count,
            examples_per_concept=examples_per_concept,
            counts=Counter({str(k): int(v) for k, v in data["counts"].items()}),
            examples={str(k): list(v) for k, v in data["examples"].items()},
            captions=int(data["captions"]),
            malformed=int(data["malformed"]),
            unreadable=[str(reason) for reason in data["unreadable"]],
            position=(int(data["position"][0]), int(data["position"][1])),
        )


def save_checkpoint(path: Path, key: dict, counts: ConceptCounts, finished: bool) -> None:
    write_json(path, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "key": key,
                      "finished": finished, **counts.to_json()})


def checkpoint_mismatch(path: Path, key: dict) -> str | None:
    """Why the checkpoint at `path` is not this run's (None: it is, or there is none).

    A checkpoint of other inputs or settings holds work a rerun would throw away, so the caller
    refuses it unless told to overwrite.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != CHECKPOINT_FORMAT or data.get("version") != CHECKPOINT_VERSION:
            return "it was written by another version of regionclip"
        saved = data["key"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "it cannot be read"
    if saved == key:
        return None
    if saved.get("inputs") != key.get("inputs"):
        return "its caption files differ in path, size or modification time"
    changed = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
    return "its settings differ: " + ", ".join(changed)


def load_checkpoint(path: Path, key: dict, min_count: int,
                    examples_per_concept: int) -> tuple[ConceptCounts, bool] | None:
    """The saved counts if they were made from the same inputs and settings, else None.

    Anything unreadable or from other inputs (a file changed size or time) is ignored: the run
    starts over rather than mixing counts of two corpora.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != CHECKPOINT_FORMAT or data.get("version") != CHECKPOINT_VERSION:
            return None
        if data.get("key") != key:
            return None
        return ConceptCounts.from_json(data, min_count, examples_per_concept), bool(data["finished"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
