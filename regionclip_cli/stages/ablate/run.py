"""`ablate` as one call: train every variant of a recipe with every seed, evaluate each, compare.

Every run is an ordinary `pretrain` or `finetune` run in OUT/runs/NN-VARIANT/seedS, so it can be
inspected, resumed or reused like any other; every recipe is parsed before the first run starts,
so a bad key in the last variant is refused before hours of training. A rerun skips finished runs
and evaluations, resumes a run that has a checkpoint but no result, and retries failed ones; a run
that fails is reported and the rest go on (exit 1).

What the runs are compared on:
- `pretrain`: region top-1 with ground-truth boxes of held-out annotated images (`eval_gt`,
  `eval_images`), by `zeroshot` with every label of every box kept — the metric that separates
  region encoders — beside AP50 on the same boxes; the frozen teacher is measured the same way,
  and chance is one over the vocabulary.
- `finetune`: the AP the run measured on its recipe's `data.test`, beside the AP50 of the same
  detections with every class drawn at random (what localisation alone earns).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.stages.ablate.grid import Variant, parse_variations, variants

STAGES = ("pretrain", "finetune")
PRETRAIN_METRICS = ("top1", "top1_base", "top1_novel", "top1_small", "top1_medium", "top1_large",
                    "AP50", "AP50_base", "AP50_novel")
FINETUNE_METRICS = ("AP50", "AP50_base", "AP50_novel", "AP", "AP50_random")


@dataclass(frozen=True)
class AblateConfig:
    """One ablation; the CLI's options map onto it one to one.

    `recipe`: a YAML file or a built-in name of `stage`. `vary`: KEY=VALUE strings, repeated keys
    give more values. `overrides`: KEY=VALUE applied to every run (as `--set`). `seeds`: each
    variant is trained once per seed (empty: the recipe's `train.seed`).
    """

    stage: Literal["pretrain", "finetune"]
    recipe: str
    vary: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    product: bool = False
    seeds: tuple[int, ...] = ()
    out: Path = Path("runs/ablate")
    eval_images: Path | None = None
    eval_gt: Path | None = None
    vocab: str | None = None


@dataclass
class RunFigures:
    """One run (a variant with one seed): its folder and figures, or why it has none."""

    variant: Variant
    seed: int
    folder: Path
    figures: dict[str, float] = field(default_factory=dict)
    images_per_second: float = math.nan
    error: str | None = None


@dataclass
class Summary:
    """One variant over its seeds: the mean, min and max of each figure (NaN-free seeds only)."""

    variant: Variant
    runs: list[RunFigures]
    mean: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]


@dataclass
class AblationResult:
    stage: str
    metrics: tuple[str, ...]
    primary: str
    summaries: list[Summary]
    runs: list[RunFigures]
    baseline: dict[str, float] | None  # pretrain: the frozen teacher on the same boxes
    chance: float | None  # pretrain: region top-1 of a random guess
    files: dict[str, Path]
    trained: int = 0
    skipped: int = 0

    @property
    def failures(self) -> list[RunFigures]:
        return [r for r in self.runs if r.error is not None]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


class AblationStopped(RegionclipError):
    """Ctrl-C or SIGTERM stopped a run: its checkpoint is saved, and a rerun resumes it."""

    exit_code = 130


@dataclass(frozen=True)
class _Planned:
    variant: Variant
    seed: int
    recipe: Any
    origin: Callable[[str], str]


def _stage_module(stage: str):
    if stage == "pretrain":
        from regionclip_cli.stages.pretrain import runner as module
        from regionclip_cli.stages.pretrain.recipe import PretrainConfig as config_class
        from regionclip_cli.stages.pretrain.task import PretrainTask as task
    else:
        from regionclip_cli.stages.finetune import runner as module
        from regionclip_cli.stages.finetune.recipe import FinetuneConfig as config_class
        from regionclip_cli.stages.finetune.task import FinetuneTask as task
    return module, config_class, task.artefact


def plan(config: AblateConfig) -> list[_Planned]:
    """Every run's parsed recipe, in table order; any bad key or value is refused here."""
    from regionclip_cli.engine.recipe import find_recipe, key_origin, load_recipe

    if config.stage not in STAGES:
        raise RegionclipError(f"ablate: unknown stage {config.stage!r}; use {' or '.join(STAGES)}")
    _, config_class, _ = _stage_module(config.stage)
    path, name = find_recipe(config.recipe)
    rows = variants(parse_variations(list(config.vary)), product=config.product)
    seeds = config.seeds or (load_recipe(config_class, path, config.overrides, origin_name=name).train.seed,)
    if len(set(seeds)) != len(seeds):
        raise RegionclipError(f"--seed {' --seed '.join(map(str, seeds))}: a seed is given twice")
    planned = []
    for variant in rows:
        for seed in seeds:
            out = config.out / "runs" / variant.folder / f"seed{seed}"
            overrides = [*config.overrides, *variant.overrides, f"train.seed={seed}", f"output={out}"]
            where = name if not variant.overrides else f"{name} with --vary {', '.join(variant.overrides)}"
            recipe = load_recipe(config_class, path, overrides, origin_name=where)
            planned.append(_Planned(variant, seed, recipe, key_origin(where, [*config.overrides, *variant.overrides])))
    return planned


def _check_evaluation(config: AblateConfig, planned: list[_Planned]) -> None:
    if config.stage == "pretrain":
        missing = [option for option, value in (("--eval-gt", config.eval_gt), ("--eval-images", config.eval_images),
                                                ("--vocab", config.vocab)) if value is None]
        if missing:
            raise RegionclipError(f"ablate pretrain: give {', '.join(missing)}: students are compared by region "
                                  "top-1 on the ground-truth boxes of held-out annotated images")
        for option, value in (("--eval-gt", config.eval_gt), ("--eval-images", config.eval_images)):
            if not Path(value).exists():
                raise RegionclipError(f"{option} {value}: does not exist")
        return
    if config.eval_gt is not None or config.eval_images is not None:
        raise RegionclipError("ablate finetune: the runs are compared on their recipe's data.test; "
                              "--eval-gt and --eval-images are for pretrain")
    for item in planned:
        if item.recipe.data.test is None:
            raise RegionclipError(f"{item.origin('data.test')}: is empty; ablate compares finetune runs on it")


def run(config: AblateConfig, *, log: Callable[[str], None] = print, progress: bool = True) -> AblationResult:
    """Train what is not trained yet, evaluate what is not evaluated yet, and write the comparison."""
    planned = plan(config)
    _check_evaluation(config, planned)
    module, _, artefact = _stage_module(config.stage)
    config.out.mkdir(parents=True, exist_ok=True)
    baseline = chance = None
    if config.stage == "pretrain":  # first: it checks the held-out set and vocabulary before any training
        teacher = planned[0].recipe.teacher
        try:
            summary = _zeroshot(config, config.out / "eval" / "teacher", model=teacher.model,
                                pretrained=teacher.pretrained, weights=teacher.weights,
                                device=planned[0].recipe.device, progress=progress)
        except RegionclipError as error:
            raise RegionclipError(f"the held-out evaluation (--eval-gt, --eval-images, --vocab): {error}") from None
        baseline, chance = _region_figures(summary), float(summary["region_accuracy"]["chance"])
    results, trained, skipped = [], 0, 0
    for number, item in enumerate(planned, start=1):
        folder = Path(item.recipe.output)
        figures = RunFigures(item.variant, item.seed, folder)
        label = f"[{number}/{len(planned)}] {item.variant.name}, seed {item.seed}"
        try:
            if (folder / artefact).exists():
                skipped += 1
                log(f"{label}: trained already ({folder / artefact})")
            else:
                resume = (folder / "checkpoints" / "last.pt").exists()
                log(f"{label}: {'resuming' if resume else 'training'} in {folder}")
                # The folder is this ablation's own: what a failed attempt left there is replaced.
                outcome = module.run(item.recipe, resume=resume, overwrite=not resume, progress=progress, log=log,
                                     origin=item.origin)
                fit = getattr(outcome, "fit", outcome)
                if fit.stopped_by is not None:
                    raise AblationStopped(f"stopped during {item.variant.name}, seed {item.seed}; its checkpoint "
                                          f"is in {folder}: rerun the same command to resume")
                trained += 1
            figures.images_per_second = _logged_speed(folder / "metrics.jsonl")
            figures.figures = _evaluate(config, item, progress)
        except RegionclipError as error:
            if error.exit_code == AblationStopped.exit_code:  # Ctrl-C, in training or in evaluation
                raise
            figures.error = str(error)
            log(f"{label}: failed: {error}")
        results.append(figures)
    from regionclip_cli.stages.ablate import report

    metrics = PRETRAIN_METRICS if config.stage == "pretrain" else FINETUNE_METRICS
    primary = metrics[0]
    summaries = summarise(results, metrics)
    result = AblationResult(config.stage, metrics, primary, summaries, results, baseline, chance, {}, trained, skipped)
    result.files = report.write(result, config)
    return result


def summarise(runs: list[RunFigures], metrics: tuple[str, ...]) -> list[Summary]:
    """Per variant, in table order: mean, min and max of each metric over the seeds that have it."""
    by_variant: dict[str, list[RunFigures]] = {}
    for item in runs:
        by_variant.setdefault(item.variant.folder, []).append(item)
    summaries = []
    for group in by_variant.values():
        mean, low, high = {}, {}, {}
        for metric in metrics:
            values = [r.figures[metric] for r in group if not math.isnan(r.figures.get(metric, math.nan))]
            mean[metric] = statistics.mean(values) if values else math.nan
            low[metric] = min(values) if values else math.nan
            high[metric] = max(values) if values else math.nan
        summaries.append(Summary(group[0].variant, group, mean, low, high))
    return summaries


def _logged_speed(metrics: Path) -> float:
    """The median images/s the run logged (NaN when it logged none)."""
    try:
        rates = [json.loads(line).get("images_per_second") for line in metrics.read_text().splitlines() if line]
    except (OSError, ValueError):
        return math.nan
    rates = [r for r in rates if isinstance(r, (int, float))]
    return statistics.median(rates) if rates else math.nan


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _evaluate(config: AblateConfig, item: _Planned, progress: bool) -> dict[str, float]:
    folder = Path(item.recipe.output)
    if config.stage == "pretrain":
        evaluation = config.out / "eval" / item.variant.folder / f"seed{item.seed}"
        summary = _zeroshot(config, evaluation, model=item.recipe.teacher.model, pretrained=None,
                            weights=folder / "student.pt", device=item.recipe.device, progress=progress)
        return _region_figures(summary)
    return _detector_figures(item.recipe, folder)


def _zeroshot(config: AblateConfig, out: Path, *, model: str, pretrained: str | None, weights: Path | None,
              device: str, progress: bool) -> dict:
    """Region top-1 and AP50 of one CLIP on every ground-truth box (zeroshot's metrics.json)."""
    from regionclip_cli.data.proposals import ProposalConfig
    from regionclip_cli.modeling.scoring import DetectionConfig
    from regionclip_cli.stages.zeroshot.stage import ZeroShotConfig
    from regionclip_cli.stages.zeroshot.stage import run as zeroshot

    summary_path = out / "metrics.json"
    if not _evaluated(summary_path, weights, config.eval_gt):
        zeroshot(ZeroShotConfig(
            images=[config.eval_images], vocab=config.vocab, out=out, model=model, pretrained=pretrained,
            weights=weights, proposals=ProposalConfig(source="file", file=config.eval_gt),
            detection=DetectionConfig(score_threshold=0.0, nms_threshold=1.0), gt=config.eval_gt,
            device=device, progress=progress, overwrite=True))
    return json.loads(summary_path.read_text(encoding="utf-8"))


def _evaluated(summary_path: Path, weights: Path | None, ground_truth: Path) -> bool:
    """Whether `summary_path` is a finished evaluation of these very weights on this ground truth
    (a run trained again since, or another annotation file, is evaluated again)."""
    from regionclip_cli.modeling.clip import file_sha256

    try:
        settings = json.loads(summary_path.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError):
        return False
    recorded = settings.get("weights")
    same_weights = recorded is None if weights is None else \
        isinstance(recorded, dict) and recorded.get("sha256") == file_sha256(Path(weights))
    return same_weights and (settings.get("gt") or {}).get("sha256") == file_sha256(Path(ground_truth))


def _region_figures(summary: dict) -> dict[str, float]:
    top1, metrics = summary["region_accuracy"]["top1"], summary["metrics"]
    figures = {f"top1{'' if group == 'all' else '_' + group}": _number(value) for group, value in top1.items()}
    figures.update({key: _number(metrics.get(key)) for key in ("AP50", "AP50_base", "AP50_novel")})
    return figures


def _detector_figures(recipe, folder: Path) -> dict[str, float]:
    """The run's own held-out AP (evaluation.json) and the random-label AP50 of its detections."""
    from regionclip_cli.data.vocab import load_vocabulary
    from regionclip_cli.evaluation.chance import random_label_levels
    from regionclip_cli.stages.finetune.data import annotation_data, dataset_vocabulary

    try:
        measured = json.loads((folder / "evaluation.json").read_text(encoding="utf-8"))["metrics"]
        detections = json.loads((folder / "detections_coco.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError) as error:
        raise RegionclipError(f"{folder}: no held-out evaluation to compare ({error}); delete the folder "
                              "and rerun to train it again") from None
    data = recipe.data
    vocabulary = load_vocabulary(recipe.test_vocabulary) if recipe.test_vocabulary else \
        dataset_vocabulary(data.vocabulary, data.train.annotations, "data.vocabulary")
    ground_truth = annotation_data(data.test.annotations, "data.test")
    random = random_label_levels(detections, ground_truth, vocabulary=vocabulary,
                                 image_ids=[image["id"] for image in ground_truth["images"]])
    figures = {key: _number(measured.get(key)) for key in FINETUNE_METRICS if key != "AP50_random"}
    figures["AP50_random"] = _number(random.get("AP50"))
    return figures
