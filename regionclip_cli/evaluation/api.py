"""One entry point for detection metrics: `evaluate_detections`, used by zeroshot, finetune and
`regionclip evaluate`.

It exists so that a detections file and a ground truth that do not belong together fail loudly
instead of scoring a silent, low AP. Before any metric is computed it checks that

- every detection's image id is a ground-truth image (else: made on other images),
- the vocabulary the detections were made with names the same classes as the ground truth at the
  same category ids (else: ids collide, e.g. COCO "person" and world "circle" are both 1),
- the detections' category ids are ground-truth categories, or extra classes the vocabulary lists
  (an open vocabulary may hold more classes than the ground truth annotates: those detections are
  left out, with a note),

and it scores only the ground-truth images that were run (`image_ids`), saying "evaluated on N
of M ground-truth images" when that is a subset. The metrics themselves come from `coco.py`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.vocab import BUILTIN_VOCABULARIES, Vocabulary, clean_lvis_name, load_vocabulary
from regionclip_cli.evaluation.coco import (
    LVIS_FREQUENCIES,
    EvalResult,
    _some,
    evaluate_coco,
    evaluate_lvis,
    load_ground_truth,
)

GroundTruth = Union[str, os.PathLike, Mapping]
Split = Union[str, Vocabulary, Mapping[str, Sequence[int]], None]
SPLIT_NAMES = ("coco", "coco-ovd", "lvis", "world")


@dataclass(frozen=True)
class DetectionsFile:
    """Detections read from disk: COCO results, plus what a detections.jsonl also tells.

    `image_ids` is the set of images the run processed (JSONL has a line per image, even one
    without detections; a COCO results array cannot say, so it is None). `labels` maps each
    category id to the class name the detector gave it (JSONL only), so names can be checked.
    `regions` are the region records of lines that carry the best class of every proposal
    (zeroshot writes them as "best" when the proposals are ground-truth boxes), for top-1 accuracy.
    """

    detections: list[dict]
    image_ids: frozenset[int] | None
    labels: dict[int, str]
    regions: tuple[dict, ...] = ()


def _normalised(name: str) -> str:
    return clean_lvis_name(str(name)).lower()


def _names_of_vocabulary(vocabulary: Vocabulary) -> dict[int, set[str]]:
    names: dict[int, set[str]] = {}
    for index, (cid, name) in enumerate(zip(vocabulary.category_ids, vocabulary.names)):
        forms = {_normalised(name)}
        if vocabulary.synonyms:
            forms |= {_normalised(s) for s in vocabulary.synonyms[index]}
        names[int(cid)] = forms
    return names


def _names_of_ground_truth(categories: Sequence[Mapping]) -> dict[int, tuple[str, set[str]]]:
    found = {}
    for cat in categories:
        forms = {_normalised(cat.get("name", ""))}
        forms |= {_normalised(s) for s in cat.get("synonyms", []) or [] if isinstance(s, str)}
        found[int(cat["id"])] = (str(cat.get("name", "")), forms)
    return found


def _suggest_vocabulary(categories: Sequence[Mapping]) -> str:
    """The built-in vocabulary whose ids and names the ground truth uses, as a hint, or ''."""
    gt = _names_of_ground_truth(categories)
    for name in BUILTIN_VOCABULARIES:
        vocab_names = _names_of_vocabulary(load_vocabulary(name))
        agree = sum(1 for cid, (_, forms) in gt.items() if forms & vocab_names.get(cid, set()))
        if gt and agree == len(gt):
            return f"; the ground truth uses the '{name}' vocabulary (--vocab {name})"
    return "; pass the vocabulary the ground truth was made with (or a file of its category names)"


def check_vocabulary(vocabulary: Vocabulary, ground_truth: GroundTruth, *, where: str = "ground truth") -> None:
    """Refuse a vocabulary whose classes are not the ground truth's, before any work is done.

    Same category id, different name (after LVIS-style cleaning, case and synonyms) is an error;
    so is a vocabulary with no category id in common with the ground truth. Vocabulary classes the
    ground truth does not have are allowed (an open vocabulary may be larger).
    """
    categories = _categories_of(ground_truth, where)
    gt = _names_of_ground_truth(categories)
    mine = _names_of_vocabulary(vocabulary)
    label = f"the vocabulary '{vocabulary.name}'"
    clashes = [
        (cid, vocabulary.name_of(cid), gt[cid][0]) for cid, forms in mine.items()
        if cid in gt and not forms & gt[cid][1]
    ]
    if clashes:
        cid, ours, theirs = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise RegionclipError(
            f"{where}: the ground truth's categories do not match {label}: category id {cid} is "
            f"'{ours}' in the vocabulary but '{theirs}' in the ground truth{more}"
            + _suggest_vocabulary(categories)
        )
    if not set(mine) & set(gt):
        raise RegionclipError(
            f"{where}: {label} has no category id in common with the ground truth "
            f"(vocabulary ids {_some(sorted(mine))}, ground truth ids {_some(sorted(gt))})"
            + _suggest_vocabulary(categories)
        )


def _categories_of(ground_truth: GroundTruth, where: str) -> list[Mapping]:
    if isinstance(ground_truth, Mapping) and isinstance(ground_truth.get("categories"), list):
        categories = ground_truth["categories"]
        try:
            return [{**c, "id": int(c["id"])} for c in categories]
        except (KeyError, TypeError, ValueError):
            pass  # the full loader below names the bad entry
    return load_ground_truth(ground_truth, where=where)["categories"]


def _labels_vocabulary(labels: Mapping[int, str]) -> Vocabulary:
    ids = sorted(labels)
    return Vocabulary("of the detections file", tuple(labels[i] for i in ids), tuple(ids))


def read_detections(path: str | os.PathLike) -> DetectionsFile:
    """A COCO results JSON array or our detections.jsonl (one line per image), as COCO results."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegionclipError(f"{path}: no such detections file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RegionclipError(f"{path}: cannot read the detections ({error})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg != "Extra data":
            raise RegionclipError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
        return _read_jsonl(path, text)
    if isinstance(data, list):
        for index, row in enumerate(data):
            missing = [k for k in ("image_id", "category_id", "bbox", "score")
                       if not isinstance(row, Mapping) or k not in row]
            if missing:
                raise RegionclipError(
                    f"{path}: detection {index} lacks {', '.join(missing)}; COCO results need image_id, "
                    "category_id, bbox [x, y, w, h] and score"
                )
        return DetectionsFile(data, None, {})
    if isinstance(data, Mapping) and "detections" in data and "file" in data:
        return _read_jsonl(path, text)
    if isinstance(data, Mapping) and "annotations" in data:
        raise RegionclipError(
            f"{path}: this is an annotation file (it has 'annotations'), not detections; "
            "pass the detections (COCO results array or detections.jsonl) first and the ground truth with --gt"
        )
    raise RegionclipError(f"{path}: expected a COCO results array or detections.jsonl lines")


def _read_jsonl(path: Path, text: str) -> DetectionsFile:
    detections: list[dict] = []
    image_ids: set[int] = set()
    labels: dict[int, str] = {}
    regions: list[dict] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image_id = int(row["image_id"])
            for det in row["detections"]:
                x1, y1, x2, y2 = (float(v) for v in det["box"])
                cid = int(det["category_id"])
                detections.append({"image_id": image_id, "category_id": cid,
                                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(det["score"])})
                if "label" in det:
                    if labels.setdefault(cid, str(det["label"])) != str(det["label"]):
                        raise ValueError(f"category id {cid} is both '{labels[cid]}' and '{det['label']}'")
        except json.JSONDecodeError as error:
            raise RegionclipError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        except (KeyError, TypeError, ValueError) as error:
            raise RegionclipError(
                f"{path}:{number}: a detections.jsonl line needs 'image_id' and 'detections' "
                f"[{{box [x1, y1, x2, y2], category_id, score}}] ({type(error).__name__}: {error})"
            ) from None
        image_ids.add(image_id)
        if isinstance(row.get("best"), dict):
            regions.append({"file": row.get("file"), "image_id": image_id, **row["best"]})
    return DetectionsFile(detections, frozenset(image_ids), labels, tuple(regions))


@dataclass(frozen=True)
class _Scope:
    """What is scored: which images, which categories, which category groups, which metric."""

    dataset: dict
    kind: str
    groups: dict[str, list[int]]
    notes: list[str]
    images_evaluated: int
    images_in_ground_truth: int


def _split_vocabulary(split: Split) -> Vocabulary | None:
    if isinstance(split, Vocabulary):
        return split
    if isinstance(split, str):
        if split.lower() not in SPLIT_NAMES:
            raise RegionclipError(f"split '{split}' is not one of {', '.join(SPLIT_NAMES)}")
        return load_vocabulary(split.lower())
    return None


def resolve_scope(ground_truth: GroundTruth, *, split: Split = None, vocabulary: Vocabulary | None = None,
                  image_ids: Iterable[int] | None = None, where: str | None = None) -> _Scope:
    """Check the vocabulary and images against the ground truth; keep what is to be scored."""
    dataset = load_ground_truth(ground_truth, where=where)
    where = where or (str(ground_truth) if not isinstance(ground_truth, Mapping) else "ground truth")
    split_vocab = _split_vocabulary(split)
    names_from = vocabulary or split_vocab
    if names_from is not None:
        check_vocabulary(names_from, dataset, where=where)
    notes: list[str] = []

    all_ids = [img["id"] for img in dataset["images"]]
    if image_ids is not None:
        wanted = {int(i) for i in image_ids}
        unknown = sorted(wanted - set(all_ids))
        if unknown:
            raise RegionclipError(f"{where}: image ids {_some(unknown)} were run but are not in the ground truth")
        dataset["images"] = [img for img in dataset["images"] if img["id"] in wanted]
        dataset["annotations"] = [a for a in dataset["annotations"] if a["image_id"] in wanted]
    evaluated = len(dataset["images"])
    if evaluated < len(all_ids):
        notes.append(f"evaluated on {evaluated} of {len(all_ids)} ground-truth images (the images that were run)")

    if vocabulary is not None:
        keep = set(vocabulary.category_ids)
        left_out = [c for c in dataset["categories"] if c["id"] not in keep]
        if left_out:
            with_boxes = {a["category_id"] for a in dataset["annotations"]}
            counted = [c for c in left_out if c["id"] in with_boxes]
            if counted:
                notes.append(
                    f"{len(counted)} ground-truth categories with boxes here are not in the vocabulary and "
                    f"were not scored: {_some([c.get('name', c['id']) for c in counted])}"
                )
            dataset["categories"] = [c for c in dataset["categories"] if c["id"] in keep]
            dataset["annotations"] = [a for a in dataset["annotations"] if a["category_id"] in keep]
            for img in dataset["images"]:
                for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                    if key in img:
                        img[key] = [c for c in img[key] if int(c) in keep]

    groups, kind, group_notes = _groups(split, split_vocab, vocabulary, dataset)
    return _Scope(dataset, kind, groups, notes + group_notes, evaluated, len(all_ids))


def _groups(split: Split, split_vocab: Vocabulary | None, vocabulary: Vocabulary | None,
            dataset: dict) -> tuple[dict[str, list[int]], str, list[str]]:
    """Category groups to report (base/novel or r/c/f), "coco" or "lvis", and notes.

    LVIS rules apply only to a federated ground truth (every category has a frequency, every
    image its `neg_category_ids`): on an exhaustively annotated COCO-style file they would drop
    the detections of categories an image does not contain, so such a file is scored the COCO way.
    """
    if isinstance(split, Mapping):
        return {str(k): [int(c) for c in v] for k, v in split.items()}, "coco", []
    categories = dataset["categories"]
    source = split_vocab or vocabulary
    splits = dict(source.splits) if source is not None else {}
    federated = (bool(categories) and all(c.get("frequency") in LVIS_FREQUENCIES for c in categories)
                 and all("neg_category_ids" in img for img in dataset["images"]))
    if federated:
        return {}, "lvis", []  # evaluate_lvis reads the groups from the ground truth's frequencies
    if set(LVIS_FREQUENCIES) <= set(splits):
        note = ("the ground truth is not federated like LVIS (no 'neg_category_ids' or category "
                "frequencies), so it is scored the COCO way; AP50_r/c/f are its frequency groups")
        return {g: [int(c) for c in splits[g]] for g in LVIS_FREQUENCIES}, "coco", [note]
    if not {"base", "novel"} & set(splits) and split_vocab is None:
        tagged = {s: [c["id"] for c in categories if c.get("split") == s] for s in ("base", "novel")}
        splits = {s: ids for s, ids in tagged.items() if ids}
    return {s: [int(c) for c in splits[s]] for s in ("base", "novel") if s in splits}, "coco", []


def evaluate_detections(
    detections: Sequence[Mapping] | DetectionsFile | str | os.PathLike,
    ground_truth: GroundTruth,
    *,
    split: Split = None,
    vocabulary: Vocabulary | None = None,
    image_ids: Iterable[int] | None = None,
    where: str | None = None,
) -> EvalResult:
    """COCO AP/AP50 (novel/base/all for split vocabularies) or LVIS AP/APr/APc/APf.

    `detections`: COCO results dicts, or a path to a COCO results JSON or a detections.jsonl
    (whose lines also give the images that were run and the class name of each category id,
    both checked), or what `read_detections` made of one. `split`: "coco", "coco-ovd", "lvis", "world", a Vocabulary or {group: ids};
    None reads it from `vocabulary`, else from the ground truth's category tags ("split" =
    base/novel, "frequency" = r/c/f for LVIS). `vocabulary`: the classes the detections were made
    with, checked against the ground truth; only its categories are scored. `image_ids`: the
    ground-truth images that were run, when not all of them. `where` names the ground truth in
    error messages (e.g. "--gt ann.json").
    """
    where = where or ("ground truth" if isinstance(ground_truth, Mapping) else str(ground_truth))
    if isinstance(detections, (str, os.PathLike)):
        detections = read_detections(detections)
    if isinstance(detections, DetectionsFile):
        loaded = detections
        rows = loaded.detections
        if image_ids is None and loaded.image_ids is not None:
            image_ids = loaded.image_ids
        if vocabulary is None and loaded.labels:
            check_vocabulary(_labels_vocabulary(loaded.labels), ground_truth, where=where)
    else:
        rows = list(detections)
    scope = resolve_scope(ground_truth, split=split, vocabulary=vocabulary, image_ids=image_ids, where=where)
    rows, extra_notes = _drop_extra_classes(rows, vocabulary, scope.dataset)
    if scope.kind == "lvis":
        result = evaluate_lvis(scope.dataset, rows)
    else:
        result = evaluate_coco(scope.dataset, rows, split=scope.groups or None)
    result.notes[:0] = scope.notes + extra_notes
    result.images_evaluated = scope.images_evaluated
    result.images_in_ground_truth = scope.images_in_ground_truth
    return result


def _drop_extra_classes(rows: list, vocabulary: Vocabulary | None, dataset: dict) -> tuple[list, list[str]]:
    """Leave out detections of vocabulary classes the ground truth does not annotate (with a note)."""
    if vocabulary is None:
        return rows, []
    known = {c["id"] for c in dataset["categories"]}
    extra = set(int(c) for c in vocabulary.category_ids) - known
    if not extra:
        return rows, []
    dropped: Counter = Counter()
    kept = []
    for row in rows:
        try:
            cid = int(row["category_id"])
        except (KeyError, TypeError, ValueError):
            kept.append(row)  # the metric's own check names the malformed entry
            continue
        if cid in extra:
            dropped[cid] += 1
        else:
            kept.append(row)
    if not dropped:
        return rows, []
    names = [vocabulary.name_of(c) for c in sorted(dropped)]
    return kept, [
        f"{sum(dropped.values())} detections of {len(dropped)} vocabulary classes the ground truth does not "
        f"annotate were left out: {_some(names)}"
    ]


def describe(result: EvalResult) -> list[tuple[str, Any]]:
    """(label, value) rows in reading order for tables: overall figures, then per split."""
    metrics = result.metrics
    rows: list[tuple[str, Any]] = [(k, metrics[k]) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl") if k in metrics]
    for key in ("APr", "APc", "APf"):
        if key in metrics:
            rows.append((key, metrics[key]))
    splits = [k[len("AP50_"):] for k in metrics if k.startswith("AP50_")]
    for name in sorted(splits, key=lambda s: {"novel": 0, "base": 1}.get(s, 2)):
        rows.append((f"AP50 {name}", metrics[f"AP50_{name}"]))
    for name in sorted(splits, key=lambda s: {"novel": 0, "base": 1}.get(s, 2)):
        rows.append((f"AP {name}", metrics[f"AP_{name}"]))
    return rows
