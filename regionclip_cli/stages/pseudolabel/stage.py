"""The pseudolabel stage as a library call: `run(PseudoLabelConfig(...))`, what the CLI calls.

The frozen teacher labels each image's proposals with its best concept of the pool (or of the
concepts the image's captions name, with `captions`), through the
shared region pipeline (`stages.regions`), shard by shard: a rerun after an interruption writes
only the missing shards, and other settings into the same folder are refused unless told to
overwrite (`data.pseudolabel_shards`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.images import PRETRAINING_INTERPOLATION, ImageTransform, find_images
from regionclip_cli.data.proposals import ProposalConfig, ProposalSource, RandomBoxConfig
from regionclip_cli.data.pseudolabel_shards import ShardConfig, ShardedLabels, candidates_setting, digest
from regionclip_cli.stages.pseudolabel.labeler import LabelRuleConfig, label_records


@dataclass(frozen=True)
class PseudoLabelConfig:
    """One pseudolabel run; the CLI's options map onto it one to one.

    `model=None` (and no weights or tag) takes the teacher the concept file was embedded with.
    """

    images: Sequence
    concepts: Path
    out: Path = Path("runs/pseudolabels")
    model: str | None = None
    pretrained: str | None = None
    weights: Path | None = None
    boxes: Path | None = None
    rpn: Path | None = None  # proposals from this RPN: its `regions` best boxes after NMS at rpn_nms
    rpn_nms: float = 0.5  # pretraining's (proposals.rpn_nms_threshold), so labels match on-the-fly ones
    captions: Path | None = None  # label each image's regions only with the concepts its captions name
    regions: int = 100
    rule: LabelRuleConfig = field(default_factory=LabelRuleConfig)
    seed: int = 0
    shard_size: int = 256
    min_size: int | None = None
    max_size: int | None = None
    batch_size: int = 1
    pictures: int = 8
    overwrite: bool = False
    device: str = "auto"


@dataclass
class PseudoLabelResult:
    summary: dict
    out: Path
    failures: list[str]  # images that could not be labelled, one line each
    warnings: list[str]  # skipped boxes
    resumed_shards: int = 0
    total_shards: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures or self.warnings else 0


class PseudoLabelInterrupted(RegionclipError):
    """Ctrl-C during a run: what was written and how to finish, in one line."""

    exit_code = 130


class Reporter:
    """Progress of a run (the CLI draws a bar); Python code may ignore it."""

    def start(self, total: int, done: int) -> None: ...

    def shard_done(self, images: int, index: int, total: int) -> None: ...


def teacher_options(config: PseudoLabelConfig, model_name: str, model_identity: str) -> tuple[str | None, str | None]:
    """(model, pretrained) for the teacher: the options, else what the concept file records."""
    if config.model is not None or config.weights is not None or config.pretrained is not None:
        return config.model, config.pretrained
    source = model_identity.split("@", 1)[1] if "@" in model_identity else ""
    pretrained = source[len("pretrained:"):] if source.startswith("pretrained:") else None
    return model_name.removesuffix("-quickgelu") if pretrained else model_name, pretrained


class CaptionCandidates:
    """`--captions`: per image, the [K] mask of the concepts its captions name (the whole pool for
    an image without captions); parsed shard by shard, so a rerun parses only what it labels."""

    def __init__(self, captions: Path, paths: list[Path], concepts: Path, concept_names: list[str]):
        from regionclip_cli.data.captions import match_captions
        from regionclip_cli.stages.concepts.mentions import CaptionMentions, pool_spacy_model

        if not Path(captions).is_file():
            raise RegionclipError(f"--captions {captions}: no such file")
        items, _ = match_captions(paths, Path(captions))
        self.uncaptioned = sum(1 for item in items if not item.captions)
        if self.uncaptioned == len(items):
            raise RegionclipError(f"--captions {captions}: no caption matches an image given (file names differ?)")
        self.position = {path: i for i, path in enumerate(paths)}
        self.mentions = CaptionMentions(items, concept_names, pool_spacy_model(concepts))
        self.pool_size = len(concept_names)

    def prepare(self, shard_paths: list[Path]) -> None:
        self.mentions.for_images([self.position[p] for p in shard_paths])

    def __call__(self, path: Path) -> torch.Tensor:
        from regionclip_cli.stages.concepts.mentions import mention_mask

        return mention_mask(self.mentions.for_images([self.position[path]])[0], self.pool_size)


def proposal_config(config: PseudoLabelConfig) -> ProposalConfig:
    """The proposals the options name: a box file, an RPN, or random boxes."""
    random = RandomBoxConfig(count=config.regions, seed=config.seed)
    if config.boxes is not None and config.rpn is not None:
        raise RegionclipError("--boxes and --rpn both name proposals: give one")
    if config.rpn is not None:
        if not 0 < config.rpn_nms <= 1:
            raise RegionclipError(f"--rpn-nms {config.rpn_nms}: must be in (0, 1]")
        return ProposalConfig("rpn", None, random, rpn=config.rpn, rpn_nms=config.rpn_nms,
                              rpn_proposals=config.regions)
    if config.boxes is not None:
        return ProposalConfig("file", config.boxes, random, max_boxes=config.regions)
    return ProposalConfig("random", None, random)


def run(config: PseudoLabelConfig, reporter: Reporter | None = None) -> PseudoLabelResult:
    from regionclip_cli.core.atomic import write_json
    from regionclip_cli.core.devices import resolve_device
    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.modeling.region_encoder import frozen_region_encoder
    from regionclip_cli.modeling.text import check_matches, load_text_embeddings
    from regionclip_cli.stages.regions import embed_regions
    from regionclip_cli.stages.zeroshot.stage import resize_for

    reporter = reporter or Reporter()
    paths, missing = find_images(config.images)
    if not paths:
        raise RegionclipError("no images to label: " + "; ".join(missing or ["no inputs given"]))
    pool = load_text_embeddings(config.concepts)
    proposals = ProposalSource(proposal_config(config))
    proposals.check(paths)
    candidates = None if config.captions is None else \
        CaptionCandidates(config.captions, paths, config.concepts, pool.names)
    model, pretrained = teacher_options(config, pool.model_name, pool.model_identity)
    try:
        clip = load_clip(model, pretrained=pretrained, weights=config.weights, device=resolve_device(config.device))
    except RegionclipError as error:
        if model is config.model:
            raise
        raise RegionclipError(f"{error} (the teacher {pool.model_identity} comes from --concepts "
                              f"{config.concepts}; pass --model/--weights to choose another)") from None
    check_matches(pool, clip, origin=f"--concepts {config.concepts}")
    settings = ShardConfig(
        model_identity=clip.identity, concepts=digest(pool.names),
        # label folders record random boxes as plain "random" (their seed and count are settings of their own)
        proposals="random" if proposals.is_random else proposals.config.describe(),
        regions_per_image=config.regions, threshold=config.rule.threshold,
        temperature=config.rule.temperature, seed=config.seed, shard_size=config.shard_size,
        images=digest([str(p.resolve()) for p in paths]),
        candidates=candidates_setting(config.captions))
    shards = ShardedLabels(config.out, settings, paths, overwrite=config.overwrite)
    encoder = frozen_region_encoder(clip.model.visual)
    # Pseudo labels stand in for the ones `pretrain` computes on the fly: resized as it resizes.
    transform = ImageTransform(clip.mean, clip.std, replace(
        resize_for(clip, config.min_size, config.max_size), interpolation=PRETRAINING_INTERPOLATION))
    concepts = torch.nn.functional.normalize(pool.embeddings.float(), dim=-1).to(clip.device)

    pending = shards.pending()
    done_images = len(paths) - sum(len(shards.shard_images(i)) for i in pending)
    reporter.start(len(paths), done_images)
    box_problems: list[str] = []
    try:
        for index in pending:
            shard_paths = shards.shard_images(index)
            if candidates is not None:
                candidates.prepare(shard_paths)
            embedded = embed_regions(encoder, transform, proposals, shard_paths, device=clip.device,
                                     batch_size=config.batch_size)
            shards.write_shard(index, label_records(embedded, concepts, config.rule, pool.names, box_problems,
                                                    candidates))
            reporter.shard_done(len(shard_paths), index, shards.num_shards)
    except KeyboardInterrupt:
        written = shards.num_shards - len(shards.pending())
        raise PseudoLabelInterrupted(
            f"{written} of {shards.num_shards} shards are written to {shards.shards_dir}; rerun the same "
            "command to finish (finished shards are kept)") from None
    summary = shards.summary()
    write_json(Path(config.out) / "summary.json", summary, indent=2)
    records = list(shards.records())
    if config.pictures:
        from regionclip_cli.stages.pseudolabel.pictures import draw_labelled_records

        draw_labelled_records(records, Path(config.out) / "pictures", limit=config.pictures)
    failures = list(missing) + [r["error"] for r in records if "error" in r]
    notes = []
    if config.captions is not None:
        notes.append(f"labels among the concepts each image's captions name (--captions); {candidates.uncaptioned} "
                     "image(s) without captions, and any whose captions name no concept, from the whole pool")
    if proposals.is_random:
        notes.append("random proposals: right for pseudo labels and region features; pictures show each "
                     "image's most confident non-overlapping regions")
    return PseudoLabelResult(summary, Path(config.out), failures, box_problems,
                             resumed_shards=shards.num_shards - len(pending), total_shards=shards.num_shards,
                             notes=notes)
