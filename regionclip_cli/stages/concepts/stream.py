"""Stream a caption corpus through spaCy workers into concept counts, resumably.

The main process reads captions, drops the ones it has already parsed (a bounded cache: corpora
repeat captions, CC3M's "actor attends the premiere" a thousand times), and hands chunks of new
captions to worker processes; results come back in order, so the counts always describe an exact
prefix of the corpus and a checkpoint can name where that prefix ends. Only a bounded number of
chunks is ever in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from regionclip_cli.stages.concepts.corpus import TEXT_NORMALISATION, Caption, FileIdentity, Malformed, read_captions
from regionclip_cli.stages.concepts.counts import ConceptCounts, checkpoint_mismatch, load_checkpoint, save_checkpoint
from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.stages.concepts.parse import ConceptParser, ParseConfig, init_worker, parse_in_worker


@dataclass(frozen=True)
class CountConfig:
    parse: ParseConfig = field(default_factory=ParseConfig)
    min_count: int = 100
    examples_per_concept: int = 3
    workers: int = 1
    chunk_size: int = 2048
    dedup_cache: int = 200_000
    checkpoint_every_s: float = 60.0


@dataclass
class CountResult:
    counts: ConceptCounts
    inputs: list[FileIdentity]
    resumed_from: int
    """Captions already counted by an earlier, interrupted run (0 for a fresh run)."""
    parsed: int
    """Distinct captions parsed by this run (fewer than read when captions repeat)."""
    seconds: float
    spacy_pipeline: str
    """The pipeline actually used (name-version-spaCy version), after any fallback."""


def checkpoint_key(inputs: Sequence[FileIdentity], settings: CountConfig, spacy_version: str) -> dict:
    """Everything the counts depend on; a checkpoint with another key is not resumed."""
    key = {
        "inputs": [identity.to_json() for identity in inputs],
        "spacy_model": settings.parse.spacy_model,
        "spacy_model_version": spacy_version,
        "stop_words": sorted(settings.parse.stop_words),
        "text_normalisation": TEXT_NORMALISATION,
        "min_count": settings.min_count,
        "examples_per_concept": settings.examples_per_concept,
    }
    return json.loads(json.dumps(key))


class _InProcess:
    """The one-worker path: parse in this process, no pickling, no start-up cost."""

    def __init__(self, settings: ParseConfig, nlp):
        self.parser = ConceptParser(settings, nlp)

    def submit(self, texts: list[str]):
        return self.parser.parse(texts)

    @staticmethod
    def result(handle):
        return handle

    def close(self) -> None:
        pass


class _WorkerPool:
    """Several spaCy processes; results are fetched in submission order.

    A process pool executor rather than `multiprocessing.Pool`: a worker that dies (out of memory,
    killed) breaks the run with an error instead of hanging it.
    """

    def __init__(self, settings: ParseConfig, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent may hold threads (progress bar) and a fork would copy them
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=init_worker, initargs=(settings,))

    def submit(self, texts: list[str]):
        return self.pool.submit(parse_in_worker, texts)

    @staticmethod
    def result(handle):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return handle.result()
        except BrokenProcessPool:
            raise RegionclipError(
                "a spaCy worker process died (out of memory?); rerun with fewer --workers — the "
                "counts so far are kept and the run resumes"
            ) from None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _chunks(captions: Iterator[Caption], size: int) -> Iterator[list[Caption]]:
    chunk: list[Caption] = []
    for caption in captions:
        chunk.append(caption)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def count_concepts(
    paths: Sequence[Path],
    settings: CountConfig,
    *,
    checkpoint: Path | None = None,
    on_malformed: Callable[[Malformed], None] = lambda m: None,
    on_unreadable: Callable[[str], None] = lambda reason: None,
    on_resume: Callable[[int], None] = lambda captions: None,
    on_progress: Callable[[int], None] = lambda captions: None,
    overwrite: bool = False,
) -> CountResult:
    """Count the concepts of every caption in `paths`, resuming from `checkpoint` if it matches.

    A checkpoint of other inputs or settings is refused (its counts would be lost) unless
    `overwrite`, which starts over. The checkpoint is rewritten every `checkpoint_every_s`
    seconds, on Ctrl-C, and at the end. `on_progress` receives the number of captions counted
    since its last call.
    """
    import spacy

    from regionclip_cli.stages.concepts.parse import load_spacy

    inputs = [FileIdentity.of(path) for path in paths]
    # Resolve the model once here: a missing model is one clear error, not N dying workers.
    nlp = load_spacy(settings.parse.spacy_model)
    version = f"{nlp.meta.get('name', '')}-{nlp.meta.get('version', '')}-spacy{spacy.__version__}"
    key = checkpoint_key(inputs, settings, version)

    counts = ConceptCounts(settings.min_count, settings.examples_per_concept)
    finished = False
    if checkpoint is not None and not overwrite:
        reason = checkpoint_mismatch(checkpoint, key)
        if reason is not None:
            raise RegionclipError(
                f"{checkpoint.parent}: holds the concept counts of another run ({reason}); pass "
                "--overwrite to start over, or choose another --out"
            )
    if checkpoint is not None and checkpoint.is_file() and not overwrite:
        loaded = load_checkpoint(checkpoint, key, settings.min_count, settings.examples_per_concept)
        if loaded is not None:
            counts, finished = loaded
            on_resume(counts.captions)
    resumed_from = counts.captions

    # Skipped lines and files are read ahead of the counting; they enter the counts (and so the
    # checkpoint) only once the counted prefix has passed them, and a resumed run reports again
    # exactly those it did not count.
    uncommitted: deque[tuple[tuple[int, int], str | None]] = deque()

    def report(line: Malformed) -> None:
        uncommitted.append((line.position, None))
        on_malformed(line)

    def unreadable_file(position: tuple[int, int], reason: str) -> None:
        uncommitted.append((position, reason))
        on_unreadable(reason)

    def commit_skipped(upto: tuple[int, int] | None) -> None:
        """Count the skipped lines and files that lie before `upto` (all of them when None)."""
        while uncommitted and (upto is None or uncommitted[0][0] < upto):
            _, unreadable_reason = uncommitted.popleft()
            if unreadable_reason is None:
                counts.malformed += 1
            else:
                counts.unreadable.append(unreadable_reason)

    def write(done: bool) -> None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, key, counts, done)

    started = time.perf_counter()
    parsed = 0
    if finished:
        return CountResult(counts, inputs, resumed_from, 0, time.perf_counter() - started, version)

    captions = read_captions(paths, report, unreadable_file, start=counts.position)
    parser = (_InProcess(settings.parse, nlp) if settings.workers <= 1
              else _WorkerPool(settings.parse, settings.workers))
    del nlp
    max_in_flight = 2 * max(1, settings.workers)
    cache_size = max(settings.dedup_cache, 4 * max_in_flight * settings.chunk_size)
    cache: OrderedDict[str, tuple[str, ...]] = OrderedDict()
    pending: set[str] = set()
    in_flight: deque = deque()
    consistent = True
    last_write = time.perf_counter()

    def resolve() -> None:
        nonlocal consistent, parsed, last_write
        handle, texts, entries = in_flight.popleft()
        results = parser.result(handle)
        consistent = False
        for text, concepts in zip(texts, results):
            cache[text] = concepts
            pending.discard(text)
        parsed += len(texts)
        for caption, concepts in entries:
            counts.add(caption, concepts if concepts is not None else cache[caption.text])
        commit_skipped(counts.position)
        consistent = True
        while len(cache) > cache_size:
            cache.popitem(last=False)
        on_progress(len(entries))
        if time.perf_counter() - last_write >= settings.checkpoint_every_s:
            write(False)
            last_write = time.perf_counter()

    try:
        for chunk in _chunks(captions, settings.chunk_size):
            entries, texts = [], []
            for caption in chunk:
                known = cache.get(caption.text)
                if known is not None:
                    cache.move_to_end(caption.text)
                elif caption.text not in pending:
                    pending.add(caption.text)
                    texts.append(caption.text)
                entries.append((caption, known))
            in_flight.append((parser.submit(texts), texts, entries))
            while len(in_flight) >= max_in_flight:
                resolve()
        while in_flight:
            resolve()
        commit_skipped(None)
        write(True)
    except BaseException:
        if consistent:
            write(False)
        raise
    finally:
        parser.close()
    return CountResult(counts, inputs, resumed_from, parsed, time.perf_counter() - started, version)
