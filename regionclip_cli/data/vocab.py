"""Vocabularies: the class names a detector or zero-shot classifier scores regions against.

Built-ins carry their official category ids (so results are valid against the official
annotation files) and their evaluation splits: `coco` (80), `coco-ovd` (48 base + 17 novel, the
OVR-CNN split RegionCLIP reports), `lvis` (1203, frequency groups r/c/f) and `world` (the
synthetic world, base/novel). `NAME:SPLIT` is one split of a built-in (`world:novel`,
`coco-ovd:base`, `lvis:r`) with its official ids: OVR-CNN's "target only" setting, where the
novel classes are detected without the base classes competing. Custom vocabularies come from a
text file (one name per line) or a comma-separated string and are numbered 1..N.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from regionclip_cli.core.errors import RegionclipError

BUILTIN_VOCABULARIES = ("coco", "coco-ovd", "lvis", "world")


@dataclass(frozen=True)
class Vocabulary:
    """Class names with their category ids, synonyms and evaluation splits.

    `splits` maps a split name ("base", "novel", "r", "c", "f") to category ids; evaluation reports
    one figure per split.
    """

    name: str
    names: tuple[str, ...]
    category_ids: tuple[int, ...]
    synonyms: tuple[tuple[str, ...], ...] = ()
    splits: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.category_ids):
            raise ValueError("names and category_ids differ in length")

    def __len__(self) -> int:
        return len(self.names)

    def name_of(self, category_id: int) -> str:
        return self.names[self.category_ids.index(category_id)]

    def subset(self, split: str) -> Vocabulary:
        """The vocabulary restricted to one split (e.g. base classes for training)."""
        keep = set(self.splits[split])
        rows = [i for i, cid in enumerate(self.category_ids) if cid in keep]
        return Vocabulary(
            name=f"{self.name}:{split}",
            names=tuple(self.names[i] for i in rows),
            category_ids=tuple(self.category_ids[i] for i in rows),
            synonyms=tuple(self.synonyms[i] for i in rows) if self.synonyms else (),
            splits={s: tuple(c for c in ids if c in keep) for s, ids in self.splits.items()},
        )

    def aligned_to(self, categories: list[dict]) -> Vocabulary:
        """Take category ids from an annotation file's categories, matched by name.

        Lets a custom vocabulary be evaluated against a COCO-format ground truth whose ids it
        does not know; names absent from the file keep ids above the file's largest id.
        """
        by_name = {str(c["name"]).strip().lower(): int(c["id"]) for c in categories}
        next_id = max(by_name.values(), default=0) + 1
        ids = []
        for name in self.names:
            if name.lower() in by_name:
                ids.append(by_name[name.lower()])
            else:
                ids.append(next_id)
                next_id += 1
        splits = dict(self.splits)
        for key in ("base", "novel"):
            tagged = [int(c["id"]) for c in categories if c.get("split") == key]
            if tagged and key not in splits:
                splits[key] = tuple(i for i in ids if i in set(tagged))
        return Vocabulary(self.name, self.names, tuple(ids), self.synonyms, splits)


def clean_lvis_name(name: str) -> str:
    """'bat_(animal)' -> 'bat animal', 'fire_hydrant' -> 'fire hydrant', as the original cleans them.

    RegionCLIP (clip_prompt_utils.py:399-401) turns underscores into spaces and drops the
    parentheses but keeps their text, which is what tells 'bow (weapon)' from 'bow (decorative
    ribbon)': dropping the text too made five pairs of LVIS classes identical.
    """
    name = name.replace("_", " ").replace("(", " ").replace(")", " ")
    return re.sub(r"\s+", " ", name).strip()


def _package_json(filename: str):
    return json.loads(resources.files("regionclip_cli").joinpath("assets", filename).read_text("utf-8"))


def _coco(ovd: bool) -> Vocabulary:
    data = _package_json("coco_categories.json")
    by_name = {c["name"]: int(c["id"]) for c in data["categories"]}
    if not ovd:
        cats = data["categories"]
        return Vocabulary("coco", tuple(c["name"] for c in cats), tuple(int(c["id"]) for c in cats))
    base = tuple(by_name[n] for n in data["ovd_base"])
    novel = tuple(by_name[n] for n in data["ovd_novel"])
    keep = set(base) | set(novel)
    cats = [c for c in data["categories"] if int(c["id"]) in keep]
    return Vocabulary(
        "coco-ovd",
        tuple(c["name"] for c in cats),
        tuple(int(c["id"]) for c in cats),
        splits={"base": base, "novel": novel},
    )


def _lvis() -> Vocabulary:
    cats = _package_json("lvis_v1_categories.json")
    splits = {g: tuple(int(c["id"]) for c in cats if c["frequency"] == g) for g in ("r", "c", "f")}
    return Vocabulary(
        "lvis",
        tuple(clean_lvis_name(c["name"]) for c in cats),
        tuple(int(c["id"]) for c in cats),
        synonyms=tuple(tuple(dict.fromkeys(clean_lvis_name(s) for s in c["synonyms"])) for c in cats),
        splits=splits,
    )


def _world() -> Vocabulary:
    from regionclip_cli.synthetic.categories import WORLD_CATEGORIES

    cats = WORLD_CATEGORIES
    return Vocabulary(
        "world",
        tuple(c.name for c in cats),
        tuple(c.id for c in cats),
        synonyms=tuple(tuple(c.synonyms) for c in cats),
        splits={s: tuple(c.id for c in cats if c.split == s) for s in ("base", "novel")},
    )


def _custom(name: str, names: list[str], origin: str) -> Vocabulary:
    cleaned = [re.sub(r"\s+", " ", n).strip() for n in names]
    cleaned = [n for n in cleaned if n]
    if not cleaned:
        raise RegionclipError(f"{origin}: the vocabulary is empty")
    duplicates = sorted({n for n in cleaned if cleaned.count(n) > 1})
    if duplicates:
        raise RegionclipError(f"{origin}: duplicate class name(s): {', '.join(duplicates[:5])}")
    return Vocabulary(name, tuple(cleaned), tuple(range(1, len(cleaned) + 1)))


def vocabulary_from_names(names: list[str], origin: str = "vocabulary") -> Vocabulary:
    """A custom vocabulary from a list of class names (numbered 1..N), as the Python API takes it."""
    return _custom("custom", [str(n) for n in names], origin)


def load_vocabulary(spec: str) -> Vocabulary:
    """Resolve `--vocab`: a built-in name, a built-in's split ('world:novel'), a text file (one
    name per line), or 'a,b,c'."""
    spec = spec.strip()
    builtins = {"coco": lambda: _coco(False), "coco-ovd": lambda: _coco(True), "lvis": _lvis, "world": _world}
    if spec.lower() in builtins:
        return builtins[spec.lower()]()
    name, colon, split = spec.partition(":")
    if colon and name.strip().lower() in builtins and not Path(spec).is_file():
        vocabulary = builtins[name.strip().lower()]()
        if split.strip() not in vocabulary.splits:
            known = ", ".join(f"{vocabulary.name}:{s}" for s in vocabulary.splits) or "none"
            raise RegionclipError(f"--vocab {spec!r}: the built-in '{vocabulary.name}' has no split "
                                  f"{split.strip()!r} (its splits: {known})")
        return vocabulary.subset(split.strip())
    path = Path(spec)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise RegionclipError(f"{path}: cannot read vocabulary file ({error})") from None
        names = [line.split("#", 1)[0] for line in lines]
        return _custom(path.stem, names, str(path))
    if "," in spec:
        return _custom("custom", spec.split(","), "--vocab")
    hint = difflib.get_close_matches(spec.lower(), BUILTIN_VOCABULARIES, n=1)
    suggestion = f"did you mean {hint[0]!r}? " if hint else ""
    raise RegionclipError(
        f"--vocab {spec!r} is neither a built-in vocabulary ({', '.join(BUILTIN_VOCABULARIES)}) "
        f"nor a file; {suggestion}for custom classes pass a file or comma-separated names "
        f"(a single class: '{spec},')"
    )
