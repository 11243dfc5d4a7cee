"""The finetuned detector's file (OUTPUT/detector.pt): one self-contained checkpoint.

Kind "detector" in our checkpoint format: `clip.*` a whole CLIP (the finetuned image tower, the
text tower it was trained with — so any vocabulary can be embedded later), `rpn.*` the frozen
offline RPN with its settings in the metadata, `bbox_pred.*` the class-agnostic box regression.
The class embeddings are not stored: they are recomputed for whatever vocabulary is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.engine.recipe import build, to_plain
from regionclip_cli.modeling.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from regionclip_cli.modeling.clip import LoadedClip
from regionclip_cli.modeling.detector.model import DetectorConfig, OpenVocabularyDetector
from regionclip_cli.modeling.detector.postprocess import PostprocessConfig

DETECTOR_KIND = "detector"


def save_detector(path: Path, detector: OpenVocabularyDetector, *, clip: LoadedClip,
                  clip_template: dict[str, torch.Tensor], rpn_file: Path, metadata: dict[str, Any]) -> None:
    from regionclip_cli.modeling.freezing import student_state_as_clip

    rpn = load_checkpoint(rpn_file)
    state = {f"clip.{k}": v for k, v in student_state_as_clip(clip_template, detector.encoder.visual).items()}
    state.update({f"rpn.{k}": v for k, v in rpn.state_dict.items()})
    state.update({f"bbox_pred.{k}": v for k, v in detector.predictor.bbox_pred.state_dict().items()})
    save_checkpoint(path, Checkpoint(DETECTOR_KIND, clip.name, state, {
        **metadata, "rpn": {"model": rpn.model, "metadata": rpn.metadata},
        "detector": to_plain(detector.config), "test": to_plain(detector.postprocess),
        "mean": list(clip.mean), "std": list(clip.std)}))


def load_detector(path: str | os.PathLike, names: list[str], *, templates: str = "ensemble",
                  device: str | torch.device = "cpu", option: str = "--detector"
                  ) -> tuple[OpenVocabularyDetector, LoadedClip]:
    """A finetuned detector for the class `names` (eval mode, batch norm folded) and its CLIP,
    whose text tower embeds the names (`set_vocabulary` swaps them for others later)."""
    import tempfile

    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.modeling.region_encoder import frozen_region_encoder
    from regionclip_cli.modeling.rpn import RPN_KIND, load_proposal_network

    checkpoint = load_checkpoint(path)
    if checkpoint.kind != DETECTOR_KIND:
        raise RegionclipError(f"{option} {path}: a regionclip '{checkpoint.kind}' checkpoint, not a detector "
                              "(written by `regionclip finetune`)")
    meta = checkpoint.metadata
    parts = {prefix: {k[len(prefix):]: v for k, v in checkpoint.state_dict.items() if k.startswith(prefix)}
             for prefix in ("clip.", "rpn.", "bbox_pred.")}
    with tempfile.TemporaryDirectory() as folder:
        clip_file, rpn_file = Path(folder, "clip.pt"), Path(folder, "rpn.pt")
        save_checkpoint(clip_file, Checkpoint("clip", checkpoint.model, parts["clip."],
                                              {"mean": meta.get("mean"), "std": meta.get("std")}))
        save_checkpoint(rpn_file, Checkpoint(RPN_KIND, meta["rpn"]["model"], parts["rpn."], meta["rpn"]["metadata"]))
        clip = load_clip(checkpoint.model, weights=clip_file, device=device)
        rpn = load_proposal_network(rpn_file, device, option=f"{option} {path}: its RPN")
    tower = frozen_region_encoder(clip.model.visual).visual  # folded copy: `clip` stays as loaded
    config = build(DetectorConfig, meta.get("detector"), "detector", str(path))
    postprocess = build(PostprocessConfig, meta.get("test"), "test", str(path))
    from regionclip_cli.modeling.text import embed_names, resolve_templates

    embeddings = embed_names(clip, names, resolve_templates(templates), progress=False)
    detector = OpenVocabularyDetector(rpn, tower, embeddings, config, mean=clip.mean, std=clip.std,
                                      postprocess=postprocess)
    detector.predictor.bbox_pred.load_state_dict(parts["bbox_pred."])
    return detector.to(device).eval(), clip
