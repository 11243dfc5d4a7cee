"""The comparison an ablation writes: a Markdown table, a CSV of every run, a bar chart, a record.

OUT/results.md    one row per variant: mean (min–max over seeds) of each figure, the teacher and
                  chance rows for pretraining, how many seeds and the training speed
OUT/results.csv   one row per run (variant, seed, folder, every figure), for a notebook
OUT/results.svg   the main figure per variant: bars at the mean, whiskers from min to max, dashed
                  lines at the teacher's level and at chance (SVG: no plotting library needed)
OUT/ablation.json the settings that made the comparison and every run's figures
Every file is written whole or not at all (temp file, then rename).
"""

from __future__ import annotations

import csv
import io
import math
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from regionclip_cli.core.atomic import write_json, write_text

if TYPE_CHECKING:
    from regionclip_cli.stages.ablate.run import AblateConfig, AblationResult

LABELS = {"top1": "region top-1", "top1_base": "top-1 base", "top1_novel": "top-1 novel",
          "top1_small": "top-1 small", "top1_medium": "top-1 medium", "top1_large": "top-1 large",
          "AP50_random": "AP50, random labels"}


def label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def spread(mean: float, low: float, high: float, seeds: int) -> str:
    """'34.1 (33.7–34.5)' over several seeds, '34.1' for one, '–' for none."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f}" if seeds < 2 else f"{mean:.1f} ({low:.1f}–{high:.1f})"


def markdown(result: AblationResult) -> str:
    metrics = result.metrics
    header = ["variant", *(label(m) for m in metrics), "seeds", "images/s"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    if result.baseline is not None:
        lines.append("| teacher (frozen) | " + " | ".join(
            "–" if math.isnan(result.baseline.get(m, math.nan)) else f"{result.baseline[m]:.1f}" for m in metrics)
            + " | | |")
    for summary in result.summaries:
        seeds = sum(1 for r in summary.runs if r.error is None)
        speeds = [r.images_per_second for r in summary.runs if not math.isnan(r.images_per_second)]
        speed = f"{sum(speeds) / len(speeds):.1f}" if speeds else "–"
        cells = [spread(summary.mean[m], summary.low[m], summary.high[m], seeds) for m in metrics]
        lines.append(f"| {summary.variant.name} | " + " | ".join(cells) + f" | {seeds} | {speed} |")
    notes = []
    if result.chance is not None:
        notes.append(f"Chance (a random class for every box): {result.chance:.1f} % region top-1.")
    if result.stage == "pretrain":
        notes.append("Region top-1: the best class of every ground-truth box; AP50 with ground-truth boxes ranks "
                     "recognition, not detection.")
    else:
        notes.append("AP50, random labels: the same detections with every class drawn at random, what "
                     "localisation alone earns.")
    notes.append("Several seeds: mean (min–max).")
    failed = result.failures
    if failed:
        notes.append(f"{len(failed)} run(s) failed: " + "; ".join(f"{r.variant.name} seed {r.seed}: {r.error}"
                                                                 for r in failed))
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def csv_text(result: AblationResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "overrides", "seed", "folder", *result.metrics, "images_per_second", "error"])
    for run in result.runs:
        writer.writerow([run.variant.name, " ".join(run.variant.overrides), run.seed, str(run.folder),
                         *("" if math.isnan(run.figures.get(m, math.nan)) else f"{run.figures[m]:.4f}"
                           for m in result.metrics),
                         "" if math.isnan(run.images_per_second) else f"{run.images_per_second:.2f}",
                         run.error or ""])
    return buffer.getvalue()


def svg_chart(result: AblationResult) -> str:
    """Horizontal bars of the main figure per variant, min–max whiskers, reference lines."""
    metric = result.primary
    rows = [(s.variant.name, s.mean[metric], s.low[metric], s.high[metric]) for s in result.summaries]
    references = []
    if result.baseline is not None and not math.isnan(result.baseline.get(metric, math.nan)):
        references.append(("teacher", result.baseline[metric], "#555555"))
    if result.chance is not None and metric.startswith("top1"):
        references.append(("chance", result.chance, "#bb3333"))
    if metric == "AP50":
        randoms = [s.mean.get("AP50_random", math.nan) for s in result.summaries]
        randoms = [v for v in randoms if not math.isnan(v)]
        if randoms:
            references.append(("random labels", sum(randoms) / len(randoms), "#bb3333"))
    values = [v for _, mean, low, high in rows for v in (mean, high) if not math.isnan(v)]
    values += [v for _, v, _ in references]
    top = max(values, default=1.0) * 1.1 or 1.0
    name_width, bar_width, row_height, margin = 260, 420, 26, 20
    height = margin * 3 + row_height * len(rows) + 20
    width = name_width + bar_width + 90

    def x(value: float) -> float:
        return name_width + bar_width * value / top

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{margin}" y="{margin}" font-size="14">{escape(label(metric))} per variant</text>']
    for i, (name, mean, low, high) in enumerate(rows):
        y = margin * 2 + i * row_height
        parts.append(f'<text x="{name_width - 8}" y="{y + 15}" text-anchor="end">{escape(name[:40])}</text>')
        if math.isnan(mean):
            parts.append(f'<text x="{name_width + 4}" y="{y + 15}" fill="#bb3333">no result</text>')
            continue
        parts.append(f'<rect x="{name_width}" y="{y + 3}" width="{x(mean) - name_width:.1f}" height="{row_height - 8}" '
                     f'fill="{"#4c72b0" if i else "#8c8c8c"}"/>')
        if high > low:
            parts.append(f'<line x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{y + 12}" y2="{y + 12}" '
                         'stroke="black" stroke-width="1.5"/>')
        parts.append(f'<text x="{x(max(mean, high)) + 6:.1f}" y="{y + 15}">{mean:.1f}</text>')
    bottom = margin * 2 + len(rows) * row_height
    for name, value, colour in references:
        parts.append(f'<line x1="{x(value):.1f}" x2="{x(value):.1f}" y1="{margin * 2 - 4}" y2="{bottom}" '
                     f'stroke="{colour}" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x(value):.1f}" y="{bottom + 14}" fill="{colour}" text-anchor="middle">'
                     f'{escape(name)} {value:.1f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write(result: AblationResult, config: AblateConfig) -> dict[str, Path]:
    """Write the four files into `config.out`; returns their paths by kind."""
    out = Path(config.out)
    files = {"table": out / "results.md", "csv": out / "results.csv", "plot": out / "results.svg",
             "record": out / "ablation.json"}
    write_text(files["table"], markdown(result))
    write_text(files["csv"], csv_text(result))
    write_text(files["plot"], svg_chart(result))
    record = {
        "stage": result.stage, "recipe": config.recipe, "vary": list(config.vary), "set": list(config.overrides),
        "product": config.product, "seeds": sorted({r.seed for r in result.runs}),
        "eval_images": None if config.eval_images is None else str(config.eval_images),
        "eval_gt": None if config.eval_gt is None else str(config.eval_gt), "vocab": config.vocab,
        "metrics": list(result.metrics), "chance": result.chance, "teacher": _plain(result.baseline),
        "runs": [{"variant": r.variant.name, "overrides": list(r.variant.overrides), "seed": r.seed,
                  "folder": str(r.folder), "figures": _plain(r.figures),
                  "images_per_second": _plain_number(r.images_per_second), "error": r.error} for r in result.runs],
    }
    write_json(files["record"], record, indent=2)
    return files


def _plain_number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def _plain(figures: dict[str, float] | None) -> dict[str, float | None] | None:
    return None if figures is None else {key: _plain_number(value) for key, value in figures.items()}
