"""Detector inference: images/s and where the time goes, RN50 at 800x1333 with 1,000 proposals.

The phases of `OpenVocabularyDetector.forward` at test time, timed one by one on the same
input: the offline RPN (its own frozen trunk + head + NMS), the box head's trunk (stem → layer3),
RoIAlign, layer4 + attention pool over every proposal, and post-processing (classifier, box
decoding, per-class NMS). Random weights: the work per image does not depend on them, except
post-processing, whose cost grows with the candidates above the threshold (a random model puts
almost all mass on background, so the candidates are few; a trained one has more).

    python benchmarks/bench_detector.py                              # CPU
    python benchmarks/bench_detector.py --device cuda --amp bf16     # GPU (target: <= 25 ms/image)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from regionclip_cli.modeling.clip import load_clip
from regionclip_cli.modeling.detector.model import DetectorConfig, OpenVocabularyDetector
from regionclip_cli.modeling.rpn import RPNConfig, build_proposal_network, freeze, normalise_and_pad

from machine import device_name, synchronize  # benchmarks/machine.py (scripts run from benchmarks/)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="RN50", help="open_clip ModifiedResNet name (random weights)")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--proposals", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=65, help="vocabulary size (COCO 48/17: 65)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads [default: torch's]")
    return parser.parse_args()


def build(args: argparse.Namespace, device: torch.device) -> OpenVocabularyDetector:
    torch.manual_seed(0)
    clip = load_clip(args.model, random_init=True, device=device)
    rpn = build_proposal_network(RPNConfig(), clip_visual=clip.model.visual, mean=clip.mean, std=clip.std)
    from regionclip_cli.modeling.region_encoder import frozen_region_encoder

    tower = frozen_region_encoder(clip.model.visual).visual  # batch norm folded into a copy
    classes = torch.randn(args.classes, clip.embed_dim)
    detector = OpenVocabularyDetector(freeze(rpn), tower, classes,
                                      DetectorConfig(proposals=args.proposals), mean=clip.mean, std=clip.std)
    # A random RPN keeps few boxes after NMS 0.7; no NMS keeps the benchmark at `proposals` boxes.
    detector.proposal_network.set_test_limits(1.0, args.proposals)
    return detector.to(device).eval()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    detector = build(args, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    image = [torch.rand(3, args.height, args.width, device=device)]
    phases = ("rpn", "trunk", "roi_align", "layer4+pool", "postprocess")
    times: dict[str, list[float]] = {p: [] for p in phases}
    totals = []

    def timed(name, fn):
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        times[name].append(time.perf_counter() - start)
        return out

    encoder = detector.encoder
    with torch.inference_mode(), autocast():
        for run in range(args.repeats + 1):  # the first run warms up and is not counted
            began = time.perf_counter()
            proposals = timed("rpn", lambda: detector.propose(image))
            batch, sizes = normalise_and_pad(image, detector.mean, detector.std)
            features = timed("trunk", lambda: encoder.trunk(batch))
            boxes = [p["boxes"] for p in proposals]
            from torchvision.ops import roi_align

            from regionclip_cli.modeling.region_encoder import TRUNK_STRIDE, attention_pool

            regions = timed("roi_align", lambda: roi_align(features.float(), [b.float() for b in boxes],
                                                           encoder.roi_size, 1.0 / TRUNK_STRIDE, 0, True))
            visual = encoder.visual
            embedded = timed("layer4+pool", lambda: torch.cat(
                [attention_pool(visual.attnpool, visual.layer4(chunk.to(features.dtype)))
                 for chunk in regions.split(encoder.box_chunk)]))
            timed("postprocess", lambda: detector._detections(*detector.predictor(embedded), proposals, sizes))
            totals.append(time.perf_counter() - began)
            if run == 0:
                for values in times.values():
                    values.clear()
                totals.clear()
    count = len(proposals[0]["boxes"])
    total = statistics.median(totals)
    print(f"{args.model} {args.height}x{args.width}, {count} proposals, {args.classes} classes, "
          f"{device_name(device)}, amp {args.amp}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'phase':<12} {'seconds':>8} {'share':>6}")
    for name in phases:
        value = statistics.median(times[name])
        print(f"{name:<12} {value:8.3f} {value / total:6.1%}")
    print(f"{'total':<12} {total:8.3f}  -> {1 / total:.3f} images/s, {total * 1000:.0f} ms/image")


if __name__ == "__main__":
    main()
