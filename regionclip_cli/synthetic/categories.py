"""The synthetic world's categories and colours.

Twenty shape categories, each with the surface forms people use for it (name, plural, synonyms),
so captions can say "three discs" and the concept parser has real language to normalise. The
novel split holds shapes that each have a visually related base shape (hexagon ~ pentagon,
crescent ~ semicircle, lightning bolt ~ arrow, teardrop ~ ellipse, hourglass ~ triangle): transfer
to novel classes is then possible from language alone, as in the paper's COCO split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def pluralize(phrase: str) -> str:
    """English plural of a noun phrase's last word; enough for the world's nouns."""
    head, _, last = phrase.rpartition(" ")
    if re.search(r"(s|x|z|ch|sh)$", last):
        last += "es"
    elif re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


@dataclass(frozen=True)
class WorldCategory:
    id: int
    name: str
    synonyms: tuple[str, ...]
    split: str  # "base" or "novel"

    @property
    def plural(self) -> str:
        return pluralize(self.name)

    @property
    def surface_forms(self) -> tuple[str, ...]:
        """Every word or phrase a caption may use for this category, singular and plural."""
        singular = (self.name, *self.synonyms)
        return singular + tuple(pluralize(s) for s in singular)


WORLD_CATEGORIES: tuple[WorldCategory, ...] = (
    WorldCategory(1, "circle", ("disc", "dot"), "base"),
    WorldCategory(2, "square", ("box", "block"), "base"),
    WorldCategory(3, "triangle", ("wedge",), "base"),
    WorldCategory(4, "star", ("starburst",), "base"),
    WorldCategory(5, "heart", ("love heart",), "base"),
    WorldCategory(6, "cross", ("plus", "plus sign"), "base"),
    WorldCategory(7, "ring", ("donut", "hoop"), "base"),
    WorldCategory(8, "diamond", ("rhombus", "lozenge"), "base"),
    WorldCategory(9, "hexagon", ("hex",), "novel"),
    WorldCategory(10, "arrow", ("pointer",), "base"),
    WorldCategory(11, "crescent", ("moon", "crescent moon"), "novel"),
    WorldCategory(12, "pentagon", ("five-sided shape",), "base"),
    WorldCategory(13, "ellipse", ("oval", "egg"), "base"),
    WorldCategory(14, "lightning bolt", ("bolt", "thunderbolt", "zigzag"), "novel"),
    WorldCategory(15, "semicircle", ("half circle", "half disc"), "base"),
    WorldCategory(16, "trapezoid", ("trapezium",), "base"),
    WorldCategory(17, "teardrop", ("drop", "raindrop"), "novel"),
    WorldCategory(18, "flower", ("blossom", "daisy"), "base"),
    WorldCategory(19, "cloud", ("puff",), "base"),
    WorldCategory(20, "hourglass", ("bowtie",), "novel"),
)

CATEGORY_BY_ID: dict[int, WorldCategory] = {c.id: c for c in WORLD_CATEGORIES}
CATEGORY_BY_NAME: dict[str, WorldCategory] = {c.name: c for c in WORLD_CATEGORIES}


def base_names() -> tuple[str, ...]:
    return tuple(c.name for c in WORLD_CATEGORIES if c.split == "base")


def novel_names() -> tuple[str, ...]:
    return tuple(c.name for c in WORLD_CATEGORIES if c.split == "novel")


# Saturated object colours (RGB), distinct from the muted backgrounds so every shape stands out.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (40, 170, 60),
    "blue": (35, 70, 215),
    "yellow": (245, 215, 30),
    "orange": (245, 130, 20),
    "purple": (130, 45, 175),
    "pink": (245, 110, 180),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
    "brown": (130, 75, 30),
    "cyan": (30, 200, 220),
}

# Muted background tints; their names appear in captions ("on a beige striped background").
BACKGROUND_TINTS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "beige": (200, 185, 150),
    "pale blue": (150, 170, 195),
    "pale green": (160, 190, 155),
    "lavender": (175, 160, 195),
    "sand": (185, 165, 120),
    "slate": (95, 105, 120),
}
