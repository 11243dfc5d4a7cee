"""Concept extraction throughput: `regionclip concepts`' fast path vs the obvious spaCy loop.

The corpus: half the synthetic world's captions (`caption_corpus`), half varied COCO-like
sentences written here, shuffled; nearly all distinct, so the figure measures parsing, not
deduplication. The fast path is the real `count_concepts` (file reading, dedup cache, workers)
over the whole corpus. The baseline `for c in captions: nlp(c)` with the full default pipeline
is run on a random subset (it manages ~100-300 captions/s); on that subset both paths must give
identical concept counts. Intermediate rows show where the speed comes from.

    python benchmarks/bench_concepts.py [--captions 100000] [--baseline 3000] [--workers 2]

The machine is shared: figures are single runs and noisy.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

SUBJECTS = ["man", "woman", "little girl", "young boy", "dog", "cat", "group of people", "couple",
            "baseball player", "surfer", "skier", "chef", "police officer", "horse", "giraffe",
            "elephant", "zebra", "child", "teenager", "old man", "bus driver", "tennis player",
            "brown bear", "flock of sheep", "cow", "bird", "student", "family", "toddler", "biker"]
ADJECTIVES = ["", "", "", "small ", "large ", "red ", "white ", "black ", "wooden ", "old ",
              "shiny ", "dirty ", "colorful ", "tall ", "empty ", "busy ", "blue ", "striped "]
OBJECTS = ["pizza", "hot dog", "skateboard", "surfboard", "tennis racket", "laptop computer",
           "cell phone", "teddy bear", "fire hydrant", "stop sign", "traffic light", "umbrella",
           "frisbee", "kite", "bicycle", "motorcycle", "train", "bench", "refrigerator", "sandwich",
           "bowl of fruit", "cup of coffee", "vase of flowers", "baseball bat", "dining table",
           "toilet", "microwave oven", "suitcase", "parking meter", "donut", "banana", "broccoli",
           "wine glass", "remote control", "hair dryer", "toothbrush", "clock tower", "sailboat",
           "pickup truck", "school bus", "computer keyboard", "street sign", "couch", "bed",
           "cake", "slice of pizza", "backpack", "handbag", "necktie", "snowboard"]
VERBS = ["is holding", "holds", "is standing next to", "sits on", "is riding", "rides",
         "is looking at", "walks past", "is eating", "carries", "is playing with", "leans on",
         "points at", "is cutting", "is throwing", "catches", "stands beside", "is pushing"]
PLACES = ["in a park", "on a city street", "in a kitchen", "at the beach", "on a snowy hill",
          "in a living room", "next to a building", "near the water", "in a field of grass",
          "on a train platform", "at an airport", "in a restaurant", "on the sidewalk",
          "in front of a store", "under a tree", "by the side of the road", "in a bathroom",
          "on a tennis court", "in the middle of a road", "inside a shop"]
TIMES = ["", "", "", " at night", " on a sunny day", " in the rain", " during the day",
         " at sunset", " in the morning", " while it snows"]
NUMBERS = ["two", "three", "four", "several", "many", "a few", "some", "2", "3", "5"]
FORMS = [
    "{A} {subject} {verb} {a} {adj}{object} {place}{time}.",
    "{Number} {subjects} {place} with {a} {adj}{object}{time}",
    "There is {a} {adj}{object} {place} and {a} {subject} {nearby}.",
    "{A} {adj}{object} and {a} {object2} sitting on top of a {surface}.",
    "Close up of {a} {adj}{object} {place}{time}.",
    "This is {a} picture of {a} {subject} who {verb} {a} {object}.",
    "{A} {subject} {verb} their {object} while {number} {subjects2} watch.",
    "An image of {number} {objects} {place}{time}.",
    "{A} {subject} wearing a {color} shirt {verb} {a} {adj}{object}.",
    "It looks like {a} {subject} {verb} {a} {object} {place}.",
]
SURFACES = ["table", "counter", "desk", "shelf", "plate", "tray", "wooden table", "kitchen counter"]
NEARBY = ["nearby", "close by", "in the background", "next to it", "behind it", "to the left"]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "pink", "grey", "orange"]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _plural(noun: str) -> str:
    head, _, rest = noun.partition(" of ")
    words = head.split()
    last = words[-1]
    irregular = {"man": "men", "woman": "women", "child": "children", "person": "people",
                 "sheep": "sheep", "family": "families", "bus": "buses", "couch": "couches",
                 "sandwich": "sandwiches", "glass": "glasses", "toothbrush": "toothbrushes"}
    words[-1] = irregular.get(last, last[:-1] + "ies" if last.endswith("y") and last[-2] not in "aeiou"
                              else last + "es" if last.endswith(("s", "sh", "ch", "x")) else last + "s")
    return " ".join(words) + (f" of {rest}" if rest else "")


def real_looking(n: int, seed: int) -> list[str]:
    """COCO-like captions: varied forms, plurals, numbers, pronouns, compounds, locations."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        adj, obj, subj = rng.choice(ADJECTIVES), rng.choice(OBJECTS), rng.choice(SUBJECTS)
        a = _article(adj or obj)
        text = rng.choice(FORMS).format(
            A=_article(subj).capitalize(), a=a, subject=subj, subjects=_plural(subj),
            subjects2=_plural(rng.choice(SUBJECTS)), verb=rng.choice(VERBS), adj=adj, object=obj,
            object2=rng.choice(OBJECTS), objects=_plural(rng.choice(OBJECTS)),
            place=rng.choice(PLACES), time=rng.choice(TIMES), number=rng.choice(NUMBERS),
            Number=rng.choice(NUMBERS).capitalize(), surface=rng.choice(SURFACES),
            nearby=rng.choice(NEARBY), color=rng.choice(COLORS),
        )
        out.append(text[0].upper() + text[1:] if rng.random() < 0.8 else text.lower())
    return out


def build_corpus(n: int, seed: int) -> list[str]:
    from regionclip_cli.synthetic.captions import caption_corpus

    captions = list(caption_corpus(n // 2, seed=seed)) + real_looking(n - n // 2, seed)
    random.Random(seed).shuffle(captions)
    return captions


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the workers, once shut down).

    On a shared machine the wall clock measures the neighbours too; CPU seconds per caption do not
    depend on them, so both are reported.
    """
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=3000, help="captions in the naive-loop subset")
    parser.add_argument("--ablation", type=int, default=10_000, help="captions for the single-process rows")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from regionclip_cli.stages.concepts.corpus import normalise_whitespace
    from regionclip_cli.stages.concepts.parse import ConceptParser, ParseConfig, concepts_in_doc, load_spacy
    from regionclip_cli.stages.concepts.stream import CountConfig, count_concepts

    captions = [normalise_whitespace(c) for c in build_corpus(args.captions, args.seed)]
    distinct = len(set(captions))
    print(f"corpus: {len(captions):,} captions, {distinct:,} distinct ({distinct / len(captions):.1%})")
    settings = ParseConfig()
    subset = random.Random(args.seed + 1).sample(captions, min(args.baseline, len(captions)))

    # 1. the obvious loop, full default pipeline (NER included), one caption at a time
    full = load_spacy(settings.spacy_model, full=True)
    print(f"spaCy pipeline: {full.meta['name']} {full.meta['version']}, components {full.pipe_names}")
    start, cpu = time.perf_counter(), cpu_seconds()
    naive_counts = Counter()
    for caption in subset:
        naive_counts.update(concepts_in_doc(full(caption), settings.stop_words))
    naive_rate = rate(len(subset), time.perf_counter() - start)
    naive_cpu_rate = rate(len(subset), cpu_seconds() - cpu)

    # the fast parser on the same subset: identical counts required
    fast = ConceptParser(settings)
    fast_counts = Counter(c for concepts in fast.parse(subset) for c in concepts)
    same = fast_counts == naive_counts

    # 2. where the speed comes from (single process, first `--ablation` captions)
    sample = captions[:args.ablation]
    start = time.perf_counter()
    list(full.pipe(sample, batch_size=settings.batch_size))
    pipe_full_rate = rate(len(sample), time.perf_counter() - start)
    del full
    start = time.perf_counter()
    fast.parse(sample)
    fast_one_rate = rate(len(sample), time.perf_counter() - start)

    # 3. the real command path over the whole corpus, `--workers` processes
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "captions.txt"
        corpus.write_text("\n".join(captions) + "\n", encoding="utf-8")
        start, cpu = time.perf_counter(), cpu_seconds()
        result = count_concepts([corpus], CountConfig(parse=settings, min_count=100,
                                                        workers=args.workers, checkpoint_every_s=1e9))
        seconds = time.perf_counter() - start
        fast_cpu_rate = rate(result.counts.captions, cpu_seconds() - cpu)
    fast_rate = rate(result.counts.captions, seconds)
    ratio = fast_rate / naive_rate
    hours_naive = 3.3e6 / naive_rate / 3600
    hours_fast = 3.3e6 / fast_rate / 3600

    rows = [
        ("naive loop: for c in captions: nlp(c), full pipeline", len(subset), naive_rate),
        ("nlp.pipe, full pipeline, 1 process", len(sample), pipe_full_rate),
        ("fast parser (no NER, head-only lemmas), 1 process", len(sample), fast_one_rate),
        (f"count_concepts, {args.workers} workers (incl. start-up, reading)", result.counts.captions, fast_rate),
    ]
    print("\n| path | captions | captions/s | vs naive |\n|---|---:|---:|---:|")
    for name, count, value in rows:
        print(f"| {name} | {count:,} | {value:,.0f} | {value / naive_rate:.1f}x |")
    print(f"\nspeed-up of the command path over the naive loop (wall clock): {ratio:.1f}x "
          "(target >= 6x on 2 cores)")
    print(f"CPU time per caption: naive {1e3 / naive_cpu_rate:.2f} ms, command path "
          f"{1e3 / fast_cpu_rate:.2f} ms (all processes) -> {fast_cpu_rate / naive_cpu_rate:.1f}x less CPU; "
          f"on {args.workers} free cores that is {args.workers * fast_cpu_rate:,.0f} captions/s, "
          f"{args.workers * fast_cpu_rate / naive_cpu_rate:.1f}x the naive loop on one")
    import os
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    print(f"distinct captions parsed by the command path: {result.parsed:,} of {result.counts.captions:,}")
    print(f"same concept counts on the {len(subset):,}-caption subset: {same} "
          f"({sum(naive_counts.values()):,} mentions, {len(naive_counts):,} concepts)")
    print(f"3.3 M captions (CC3M): naive {hours_naive:.1f} h, fast {hours_fast:.2f} h "
          f"({3.3e6 / fast_rate / 60:.0f} min)")
    print(f"concepts with >= 100 mentions in the corpus: "
          f"{sum(1 for v in result.counts.counts.values() if v >= 100):,}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
