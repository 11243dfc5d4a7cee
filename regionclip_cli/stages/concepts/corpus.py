"""Caption corpora: JSON Lines, COCO captions JSON or plain text, gzip or not, streamed.

A corpus of millions of captions must not be loaded into memory, and one bad line must not end a
run that has hours of parsing behind it: readers yield captions one at a time, report each
malformed line (file and line number) to a callback and go on. Every caption carries its position
(file index, record index within the file) so a checkpoint can say exactly where to resume.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from regionclip_cli.core.errors import InputError

IMAGE_KEYS = ("image", "image_id", "file_name", "file", "filename", "url", "id")
"""Keys naming a caption's image in a JSON Lines record; the first present is kept with it."""

_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Caption:
    """One caption, normalised by `normalise_text`, with the image it describes (if the input says)."""

    text: str
    image: str | int | None
    file_index: int
    record: int
    """0-based index of the caption within its file; resuming skips records below it."""


@dataclass(frozen=True)
class Malformed:
    """A line or entry that could not be read: reported as `path:line: reason`.

    `file_index` and `next_record` place it among the captions, so a resumed run neither loses
    nor double-counts the lines skipped before its checkpoint.
    """

    path: str
    line: int
    reason: str
    file_index: int = 0
    next_record: int = 0

    @property
    def position(self) -> tuple[int, int]:
        return (self.file_index, self.next_record)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class FileIdentity:
    """What makes a checkpoint valid for an input: the same path, size and modification time."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        stat = path.stat()
        return cls(str(path.resolve()), stat.st_size, stat.st_mtime_ns)

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


TEXT_NORMALISATION = "nfkc-no-symbols-1"
"""Names the rules of `normalise_text`; part of the concepts checkpoint key, so counts made under
other rules are not resumed."""

_SPACED_CATEGORIES = frozenset({"So", "Sk", "Cc", "Cs", "Co", "Cn"})  # symbols, emoji, controls
_INVISIBLE = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef\u20e3]")  # variation selectors, keycap


def normalise_text(text: str) -> str:
    """Caption text as the parser should see it: NFKC, no emoji, symbols or invisible characters.

    Without this "🐱 cat", "🔺 triangle" and "\u200b circle" become concepts of their own beside
    "cat", "triangle" and "circle". NFKC folds compatibility forms (full-width letters,
    ligatures); format characters (Unicode Cf: zero-width spaces and joiners, soft hyphens),
    variation selectors and the keycap mark vanish, as they sit inside words; emoji and other
    symbols (So, Sk), controls and unassigned code points become spaces; whitespace runs collapse.
    """
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cf":
            continue
        kept.append(" " if category in _SPACED_CATEGORIES and not ch.isspace() else ch)
    return _WHITESPACE.sub(" ", "".join(kept)).strip()


def _open_binary(path: Path):
    """gzip is detected by its magic bytes, not the name: `.txt` files are sometimes gzipped."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def detect_format(path: Path) -> str:
    """'jsonl', 'coco' or 'text': by extension, else by the first non-blank character."""
    suffix = _base_suffix(path)
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "coco"
    if suffix in (".txt", ".text", ".captions"):
        return "text"
    with _open_binary(path) as stream:
        head = stream.read(4096).lstrip()
    if head.startswith(b"{"):
        first_line = head.split(b"\n", 1)[0].strip()
        try:
            json.loads(first_line)
            return "jsonl"
        except ValueError:
            return "coco"
    return "text"


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with _open_binary(path) as stream:
        yield from enumerate(stream, start=1)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8").rstrip("\r\n")


def _image_of(record: dict) -> str | int | None:
    for key in IMAGE_KEYS:
        value = record.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return value
    return None


def _text_lines(path: Path, report: Callable[[int, str], None]) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank UTF-8 lines; undecodable ones are reported and skipped."""
    for number, raw in _lines(path):
        try:
            line = _decode(raw)
        except UnicodeDecodeError:
            report(number, "not UTF-8 text")
            continue
        if line.strip():
            yield number, line


def _read_text(path: Path, report: Callable[[int, str], None]) -> Iterator[tuple[str, str | int | None]]:
    for _, line in _text_lines(path, report):
        yield line, None


def _read_jsonl(path: Path, report: Callable[[int, str], None]) -> Iterator[tuple[str, str | int | None]]:
    for number, line in _text_lines(path, report):
        try:
            record = json.loads(line)
        except ValueError as error:
            report(number, f"not valid JSON ({error.msg})")
            continue
        if not isinstance(record, dict):
            report(number, 'expected an object with "caption" or "captions"')
            continue
        captions = record.get("captions", record.get("caption"))
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            report(number, 'needs "caption" (a string) or "captions" (a list of strings)')
            continue
        image = _image_of(record)
        for caption in captions:
            yield caption, image


def _read_coco(path: Path, report: Callable[[int, str], None]) -> Iterator[tuple[str, str | int | None]]:
    """COCO captions files are one JSON document (≈90 MB for train2017): read whole, then stream."""
    try:
        with _open_binary(path) as stream:
            data = json.load(stream)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a valid JSON document ({error}); for one record per line "
                         "name the file .jsonl") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise InputError(f'{path}: a COCO captions file needs an "annotations" list '
                         '(as captions_train2017.json)')
    names = {}
    for image in data.get("images") or []:
        if isinstance(image, dict) and "id" in image and "file_name" in image:
            names[image["id"]] = image["file_name"]
    for index, annotation in enumerate(annotations):
        caption = annotation.get("caption") if isinstance(annotation, dict) else None
        if not isinstance(caption, str):
            report(index + 1, f'annotations[{index}] has no "caption" string')
            continue
        image_id = annotation.get("image_id")
        yield caption, names.get(image_id, image_id)


READERS = {"text": _read_text, "jsonl": _read_jsonl, "coco": _read_coco}


def check_inputs(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Split the inputs into readable files and one-line reasons for the others."""
    readable, problems = [], []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            problems.append(f"{path}: no such file")
        elif not path.is_file():
            problems.append(f"{path}: not a file")
        elif not os.access(path, os.R_OK):
            problems.append(f"{path}: not readable (permissions)")
        else:
            readable.append(path)
    return readable, problems


def read_captions(
    paths: Sequence[Path],
    report: Callable[[Malformed], None],
    on_unreadable: Callable[[tuple[int, int], str], None],
    start: tuple[int, int] = (0, 0),
) -> Iterator[Caption]:
    """Every non-empty caption of every file in order, from position `start` (file, record).

    Malformed lines go to `report` (those before `start` are not reported again: the checkpoint
    already counted them). A file that cannot be read at all goes to `on_unreadable` with a
    one-line reason and the position where reading stopped, and reading goes on with the next file.
    """
    start_file, start_record = start
    for file_index, path in enumerate(paths):
        if file_index < start_file:
            continue
        skip = start_record if file_index == start_file else 0
        record = 0

        def report_line(line: int, reason: str) -> None:
            if record >= skip:
                report(Malformed(str(path), line, reason, file_index, record))

        try:
            for text, image in READERS[detect_format(path)](path, report_line):
                text = normalise_text(text)
                if not text:
                    continue
                if record >= skip:
                    yield Caption(text, image, file_index, record)
                record += 1
        except InputError as error:
            on_unreadable((file_index, record), str(error))
        except (OSError, EOFError, gzip.BadGzipFile) as error:
            on_unreadable((file_index, record), f"{path}: cannot be read ({error})")
