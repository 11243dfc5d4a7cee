"""Captions written the way people write them, from a scene's objects.

RegionCLIP learns region concepts from *captions*, so the world's captions carry the difficulties
of real ones: plurals and synonyms ("three discs"), counts in words, colours and sizes only
sometimes, objects left unmentioned, words that are not objects ("background", "picture",
"pattern") and many sentence forms. They are always true: counts are the real counts, colours and
positions the real ones, and every caption names at least one object that is in the image and
none that is not.

Captions need only the objects' categories, colours and boxes, so `caption_corpus` can write
captions for sampled object sets without drawing anything (fast, for text-only benchmarks).
"""

from __future__ import annotations

import random
import re
from typing import Iterator, Sequence

from regionclip_cli.synthetic.categories import (
    BACKGROUND_TINTS,
    CATEGORY_BY_ID,
    OBJECT_COLOURS,
    WORLD_CATEGORIES,
    WorldCategory,
    pluralize,
)
from regionclip_cli.synthetic.render import BACKGROUND_KINDS, Background, WorldObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
BACKGROUND_WORDS = {
    "noise": ("speckled", "noisy", "grainy"),
    "stripes": ("striped", "stripy", "lined"),
    "gradient": ("gradient", "smooth", "shaded"),
    "checker": ("checkered", "chequered", "checkerboard"),
    "blobs": ("mottled", "blotchy", "hazy"),
}
SMALL_WORDS = ("small", "tiny", "little")
LARGE_WORDS = ("large", "big", "huge")
PICTURE_WORDS = ("picture", "image", "photo", "drawing", "illustration", "scene")
NEAR_WORDS = ("next to", "beside", "near", "along with", "together with", "and also")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" or word.startswith("hour") else "a"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _join(parts: Sequence[str], rng: random.Random) -> str:
    if len(parts) == 1:
        return parts[0]
    last = " and " if rng.random() < 0.85 else ", and " if len(parts) > 2 else " and "
    return ", ".join(parts[:-1]) + last + parts[-1]


def _size_word(obj: WorldObject, image_size: int, rng: random.Random) -> str | None:
    side = max(obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]) / image_size
    if side < 0.15:
        return rng.choice(SMALL_WORDS)
    if side > 0.33:
        return rng.choice(LARGE_WORDS)
    return None


def _position(obj: WorldObject, image_size: int, rng: random.Random) -> str:
    cx = (obj.box[0] + obj.box[2]) / 2 / image_size
    cy = (obj.box[1] + obj.box[3]) / 2 / image_size
    col = "left" if cx < 0.36 else "right" if cx > 0.64 else ""
    row = "top" if cy < 0.36 else "bottom" if cy > 0.64 else ""
    if row and col:
        return rng.choice((f"in the {row} {col} corner", f"at the {row} {col}", f"{row} {col}"))
    if row:
        return rng.choice((f"at the {row}", f"near the {row}", f"at the {row} of the {rng.choice(PICTURE_WORDS)}"))
    if col:
        return rng.choice((f"on the {col}", f"to the {col}", f"on the {col} side"))
    return rng.choice(("in the middle", "in the centre", "in the center", "right in the middle"))


def _relation(a: WorldObject, b: WorldObject, rng: random.Random) -> str:
    """A true spatial relation of a to b when it is clear, otherwise a neutral one."""
    dx = (a.box[0] + a.box[2] - b.box[0] - b.box[2]) / 2
    dy = (a.box[1] + a.box[3] - b.box[1] - b.box[3]) / 2
    if abs(dy) > 2 * abs(dx) and abs(dy) > 20:
        return rng.choice(("above", "over")) if dy < 0 else rng.choice(("below", "under", "beneath"))
    if abs(dx) > 2 * abs(dy) and abs(dx) > 20:
        return "to the left of" if dx < 0 else "to the right of"
    return rng.choice(NEAR_WORDS)


class _Group:
    """All objects of one category in a scene, and the ways to name them."""

    def __init__(self, category: WorldCategory, objects: list[WorldObject]):
        self.category = category
        self.objects = objects

    def noun(self, rng: random.Random, plural: bool) -> str:
        forms = self.category.synonyms
        noun = rng.choice(forms) if forms and rng.random() < 0.35 else self.category.name
        return pluralize(noun) if plural else noun

    def phrase(self, rng: random.Random, image_size: int, detail: float = 0.5) -> str:
        """'two red stars', 'a tiny box', 'some discs', 'three hoops, one blue and two pink'."""
        n = len(self.objects)
        colours = [o.colour for o in self.objects]
        if n == 1:
            words = []
            size = _size_word(self.objects[0], image_size, rng) if rng.random() < detail * 0.5 else None
            if size:
                words.append(size)
            if rng.random() < detail:
                words.append(colours[0])
            words.append(self.noun(rng, plural=False))
            body = " ".join(words)
            determiner = rng.random()
            if determiner < 0.8:
                return _with_article(body)
            return f"{'one' if determiner < 0.9 else 'a single'} {body}"
        noun = self.noun(rng, plural=True)
        r = rng.random()
        if r < 0.65:
            count = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
        elif n == 2:
            count = rng.choice(("a couple of", "a pair of", "two"))
        else:
            count = rng.choice(("some", "several", "a few", "a group of", "multiple", "many"))
        if len(set(colours)) == 1 and rng.random() < detail:
            return f"{count} {colours[0]} {noun}"
        if len(set(colours)) > 1 and rng.random() < detail * 0.6:
            distinct = sorted(set(colours), key=colours.index)
            if n == 2:
                return f"{count} {noun}, one {colours[0]} and one {colours[1]}"
            return f"{count} {_join(distinct, rng)} {noun}"
        return f"{count} {noun}"


def _background_phrase(background: Background, rng: random.Random) -> str:
    kind = rng.choice(BACKGROUND_WORDS[background.kind])
    if rng.random() < 0.5:
        kind = f"{background.tint} {kind}"
    return f"{_article(kind)} {kind} {rng.choice(('background', 'background', 'backdrop', 'pattern'))}"


def _capitalise(text: str, rng: random.Random) -> str:
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.45 else text


def _write_one(groups: list[_Group], background: Background, image_size: int, rng: random.Random) -> str:
    total = sum(len(g.objects) for g in groups)
    keep = len(groups) if rng.random() < 0.4 else rng.randint(1, len(groups))
    chosen = rng.sample(groups, keep)
    chosen.sort(key=lambda g: -max(o.area for o in g.objects))
    detail = rng.random()
    phrases = [g.phrase(rng, image_size, detail) for g in chosen]
    listing = _join(phrases, rng)
    form = rng.randrange(12)
    if form == 0:
        return _capitalise(f"{listing} on {_background_phrase(background, rng)}", rng)
    if form == 1:
        verb = "is" if len(chosen[0].objects) == 1 else "are"
        where = rng.choice(("", " here", " in this picture", " in the image", f" on {_background_phrase(background, rng)}"))
        return f"There {verb} {listing}{where}."
    if form == 2 and len(chosen) >= 2:
        a, b = chosen[0], chosen[1]
        relation = _relation(a.objects[0], b.objects[0], rng) if len(a.objects) == len(b.objects) == 1 else rng.choice(NEAR_WORDS)
        return _capitalise(f"{phrases[0]} {relation} {phrases[1]}", rng)
    if form == 3:
        lead = rng.choice(("a picture with", "an image with", "a drawing with", "a photo with", "a scene with"))
        return _capitalise(f"{lead} {listing} in it", rng)
    if form == 4:
        lead = rng.choice(("a photo of", "an image of", "a picture of", "a close-up of", "a drawing of",
                           "this picture shows", "the image shows", "I can see", "we see", "here we have",
                           "a sketch of", "clip art of", "an abstract picture of", "a simple graphic of"))
        where = f" on {_background_phrase(background, rng)}" if rng.random() < 0.3 else ""
        return _capitalise(f"{lead} {listing}{where}", rng)
    if form == 5 and len(chosen[0].objects) == 1:
        return _capitalise(f"{phrases[0]} {_position(chosen[0].objects[0], image_size, rng)}", rng)
    if form == 6 and total > 1:
        verb = rng.choice(("scattered over", "spread across", "floating on", "sitting on", "placed on"))
        return _capitalise(f"{listing} {verb} {_background_phrase(background, rng)}", rng)
    if form == 7:
        return _capitalise(f"{_background_phrase(background, rng)} with {listing} on it", rng)
    if form == 8 and len(chosen) >= 2 and len(chosen[0].objects) == len(chosen[1].objects) == 1:
        big, small = chosen[0], chosen[1]
        if big.objects[0].area > 1.5 * small.objects[0].area:
            first = f"the {big.objects[0].colour} {big.noun(rng, False)}"
            second = f"the {small.objects[0].colour} {small.noun(rng, False)}"
            if rng.random() < 0.5:
                return f"{first[0].upper()}{first[1:]} is {rng.choice(('bigger', 'larger'))} than {second}."
            return f"{second[0].upper()}{second[1:]} is {rng.choice(('smaller', 'much smaller'))} than {first}."
    if form == 9 and total == 1:
        return _capitalise(f"{rng.choice(('just', 'only', 'nothing but'))} {phrases[0]}", rng)
    if form == 10 and keep == len(groups) and total > 1:
        count = NUMBER_WORDS[total] if total < len(NUMBER_WORDS) else str(total)
        noun = rng.choice(("shapes", "things", "objects", "figures"))
        return _capitalise(f"{count} {noun}: {listing}", rng)
    if form == 11 and len(chosen[0].objects) == 1:
        obj, noun = chosen[0].objects[0], chosen[0].noun(rng, False)
        colour = f"{obj.colour} " if rng.random() < 0.6 else ""
        return f"Look at the {colour}{noun} {_position(obj, image_size, rng)}!"
    if len(chosen) == 1 and rng.random() < 0.75:
        # A bare "a heart" is rare in real captions; people add where it is or what it is on.
        if len(chosen[0].objects) == 1 and rng.random() < 0.5:
            return _capitalise(f"{listing} {_position(chosen[0].objects[0], image_size, rng)}", rng)
        return _capitalise(f"{listing} on {_background_phrase(background, rng)}", rng)
    return _capitalise(listing, rng)


def write_captions(objects: Sequence[WorldObject], background: Background, image_size: int,
                   count: int, rng: random.Random) -> list[str]:
    """`count` distinct captions of one scene (fewer only if the scene allows no more)."""
    by_category: dict[int, list[WorldObject]] = {}
    for obj in sorted(objects, key=lambda o: -o.area):
        by_category.setdefault(obj.category_id, []).append(obj)
    groups = [_Group(CATEGORY_BY_ID[cid], objs) for cid, objs in by_category.items()]
    captions: list[str] = []
    for _ in range(count * 4):
        caption = _write_one(groups, background, image_size, rng)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == count:
            break
    return captions


def caption_rng(seed: int, index: int) -> random.Random:
    """The caption RNG of image `index` in world `seed` (string seeds hash the same everywhere)."""
    return random.Random(f"world-captions:{seed}:{index}")


_COLOUR_NAMES = tuple(OBJECT_COLOURS)
_TINT_NAMES = tuple(BACKGROUND_TINTS)
_OBJECT_COUNTS = (1, 1, 2, 2, 3, 3, 4, 5, 6)


def _sampled_scene(rng: random.Random, image_size: int) -> tuple[list[WorldObject], Background]:
    """A plausible object set with no pixels behind it (uses only rng.random(), for speed)."""
    r = rng.random
    objects = []
    for _ in range(_OBJECT_COUNTS[int(r() * len(_OBJECT_COUNTS))]):
        side = image_size * (0.06 + 0.44 * r())
        x, y = r() * (image_size - side), r() * (image_size - side)
        category_id = 1 + int(r() * len(WORLD_CATEGORIES))
        objects.append(WorldObject(category_id, _COLOUR_NAMES[int(r() * len(_COLOUR_NAMES))], (x, y, x + side, y + side)))
    kind = BACKGROUND_KINDS[int(r() * len(BACKGROUND_KINDS))]
    return objects, Background(kind, _TINT_NAMES[int(r() * len(_TINT_NAMES))], ())


def caption_corpus(n: int, seed: int = 0, image_size: int = 224) -> Iterator[str]:
    """n world-style captions without rendering: object sets are sampled directly."""
    rng = random.Random(f"world-corpus:{seed}")
    for _ in range(n):
        objects, background = _sampled_scene(rng, image_size)
        yield write_captions(objects, background, image_size, 1, rng)[0]


_SURFACE_FORMS = sorted(((form, c.id) for c in WORLD_CATEGORIES for form in c.surface_forms),
                        key=lambda item: -len(item[0]))
_FORM_TO_ID = dict(_SURFACE_FORMS)
_MENTION = re.compile(r"\b(" + "|".join(re.escape(f) for f, _ in _SURFACE_FORMS) + r")\b", re.IGNORECASE)


def mentioned_categories(caption: str) -> set[int]:
    """Category ids a caption names (any name, plural or synonym; longest phrase wins)."""
    return {_FORM_TO_ID[m.group(1).lower()] for m in _MENTION.finditer(caption)}


def naming_caption(objects: Sequence[WorldObject], rng: random.Random) -> str:
    """Every object named and nothing else, in random order: 'a disc and two stars'.

    The teacher's warm-up captions: with colours, sizes and backgrounds left out, only the shapes
    can tell a batch's captions apart, so contrastive training has to learn them.
    """
    by_category: dict[int, list[WorldObject]] = {}
    for obj in objects:
        by_category.setdefault(obj.category_id, []).append(obj)
    phrases = [_Group(CATEGORY_BY_ID[cid], objs).phrase(rng, 0, detail=0.0) for cid, objs in by_category.items()]
    rng.shuffle(phrases)
    return _join(phrases, rng)


_SINGULAR_FORMS = {c.id: (c.name, *c.synonyms) for c in WORLD_CATEGORIES}
_PLURAL_FORMS = {form for c in WORLD_CATEGORIES for form in c.surface_forms if form not in _SINGULAR_FORMS[c.id]}


def swapped_caption(caption: str, rng: random.Random) -> str | None:
    """The caption with one shape word replaced by a shape it does not name ("a red star" →
    "a red hexagon"); None when it names no shape.

    The teacher's hard negatives: colours, positions and backgrounds stay, so only the shape can
    tell the caption from its swap, and contrastive training cannot match images by colour alone.
    The replacement keeps the plural, and a preceding "a"/"an" is fixed to match it.
    """
    mentions = list(_MENTION.finditer(caption))
    if not mentions:
        return None
    named = {_FORM_TO_ID[m.group(1).lower()] for m in mentions}
    mention = rng.choice(mentions)
    form = mention.group(1).lower()
    other = rng.choice([c.id for c in WORLD_CATEGORIES if c.id not in named])
    singular = _SINGULAR_FORMS[other]
    new = rng.choice([pluralize(s) for s in singular] if form in _PLURAL_FORMS else singular)
    before = caption[:mention.start()]
    article = re.search(r"\b(an?) $", before, re.IGNORECASE)
    if article:
        fixed = _article(new)
        if article.group(1)[0].isupper():
            fixed = fixed.capitalize()
        before = before[:article.start(1)] + fixed + " "
    return before + new + caption[mention.end():]
