"""Region encoder vs crop-and-encode: time and FLOPs for N boxes on one detection-sized image.

The region encoder runs CLIP's trunk once on the whole image and only res5 + attention pool per
box; the obvious alternative crops every box, resizes it to CLIP's input size and runs the whole
CLIP image tower per crop. Both run in this process on the same threads, interleaved, so machine
noise hits them alike. Columns: median wall seconds of each method and their ratio ("speed x");
the ratio of the fastest runs ("best x") and of median process CPU time ("CPU x"), which a shared,
busy machine disturbs less; the FLOPs of each (torch's FlopCounterMode) and their ratio, i.e. the
speed-up that doing less work alone would explain; "speed/FLOPs" above 1 means the region path
also runs its FLOPs faster (bigger, better-shaped matrix products).

    python benchmarks/bench_region_encoder.py                      # CPU, 100 and 300 boxes
    python benchmarks/bench_region_encoder.py --device cuda --amp bf16 --channels-last --boxes 100 300 1000
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import roi_align

from regionclip_cli.modeling.clip import load_clip
from regionclip_cli.data.proposals import RandomBoxConfig, random_boxes
from regionclip_cli.modeling.region_encoder import TRUNK_STRIDE, RegionEncoder, attention_pool

from machine import device_name  # benchmarks/machine.py (scripts run from benchmarks/)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="RN50", help="open_clip ModifiedResNet name (random weights)")
    parser.add_argument("--boxes", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median reported)")
    parser.add_argument("--crop-batch", type=int, default=32, help="crops per encode_image call")
    parser.add_argument("--box-chunk", type=int, default=256, help="boxes per res5 call in the region encoder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads [default: torch's]")
    parser.add_argument("--profile", action="store_true", help="also time trunk / RoIAlign / layer4 / attnpool")
    return parser.parse_args()


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.device = torch.device(args.device)
        self.args = args
        clip = load_clip(args.model, random_init=True, device=self.device)
        self.visual = clip.model.visual
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.visual.to(memory_format=self.memory_format)
        self.encoder = RegionEncoder(self.visual, box_chunk=args.box_chunk).eval()
        self.crop_size = int(self.visual.image_size)
        generator = torch.Generator().manual_seed(0)
        image = torch.randn(1, 3, args.height, args.width, generator=generator)
        self.image = image.to(self.device).contiguous(memory_format=self.memory_format)

    def autocast(self):
        if self.args.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.args.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def region(self, boxes: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.image, [boxes])

    def crops(self, boxes: torch.Tensor) -> torch.Tensor:
        """Crop each box (pixel-rounded), resize to CLIP's input size, encode in batches."""
        size = self.crop_size
        resized = [
            F.interpolate(self.image[:, :, y1:y2, x1:x2], size=(size, size), mode="bilinear", align_corners=False)
            for x1, y1, x2, y2 in boxes.round().int().tolist()
        ]
        batch = torch.cat(resized).contiguous(memory_format=self.memory_format)
        return torch.cat([self.visual(part) for part in batch.split(self.args.crop_batch)])

    def timed(self, fn: Callable[[], torch.Tensor]) -> tuple[float, float]:
        """(wall, process CPU) seconds; CPU time is less hurt by other jobs taking our cores."""
        self.sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        with self.autocast():
            fn()
        self.sync()
        return time.perf_counter() - start, time.process_time() - start_cpu

    def flops(self, fn: Callable[[], torch.Tensor]) -> int:
        counter = FlopCounterMode(display=False)
        with counter, self.autocast():
            fn()
        return counter.get_total_flops()

    def stages(self, boxes: torch.Tensor) -> dict[str, float]:
        """Median seconds of each stage of the region encoder."""
        visual, encoder = self.visual, self.encoder
        times: dict[str, list[float]] = {"trunk": [], "roi_align": [], "layer4": [], "attnpool": []}
        for _ in range(self.args.repeats):
            with self.autocast():
                t0 = time.perf_counter()
                features = encoder.trunk(self.image)
                self.sync()
                t1 = time.perf_counter()
                regions = roi_align(features, [boxes.to(features.dtype)], output_size=encoder.roi_size,
                                    spatial_scale=1 / TRUNK_STRIDE, sampling_ratio=0, aligned=True)
                self.sync()
                t2 = time.perf_counter()
                res5 = [visual.layer4(chunk) for chunk in regions.split(encoder.box_chunk)]
                self.sync()
                t3 = time.perf_counter()
                for chunk in res5:
                    attention_pool(visual.attnpool, chunk)
                self.sync()
                t4 = time.perf_counter()
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[key].append(value)
        return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(args)
    where = device_name(bench.device)
    print(f"{args.model} (random weights), image {args.height}x{args.width}, device {bench.device} ({where}), "
          f"{torch.get_num_threads()} threads, amp {args.amp}, channels_last {args.channels_last}, "
          f"torch {torch.__version__}, median of {args.repeats} runs after 1 warm-up")
    header = (f"{'boxes':>5} | {'region s':>9} | {'crops s':>8} | {'speed x':>7} | {'best x':>6} | "
              f"{'CPU x':>6} | {'region GF':>9} | {'crops GF':>9} | {'FLOPs x':>7} | speed/FLOPs")
    print(header)
    print("-" * len(header))
    rows = []
    with torch.inference_mode():
        for count in args.boxes:
            boxes = random_boxes(args.width, args.height, RandomBoxConfig(count=count, seed=count)).to(bench.device)
            region = lambda: bench.region(boxes)  # noqa: E731
            crops = lambda: bench.crops(boxes)  # noqa: E731
            bench.timed(region), bench.timed(crops)  # warm-up: allocator, oneDNN/cuDNN kernel choice
            region_times, crop_times = [], []
            for _ in range(args.repeats):  # interleaved so that load spikes hit both methods
                region_times.append(bench.timed(region))
                crop_times.append(bench.timed(crops))
            region_s, crop_s = (statistics.median(t[0] for t in ts) for ts in (region_times, crop_times))
            best = min(t[0] for t in crop_times) / min(t[0] for t in region_times)
            cpu = statistics.median(t[1] for t in crop_times) / statistics.median(t[1] for t in region_times)
            region_flops, crop_flops = bench.flops(region), bench.flops(crops)
            speed, flop_ratio = crop_s / region_s, crop_flops / region_flops
            rows.append((count, boxes))
            print(f"{count:>5} | {region_s:>9.3f} | {crop_s:>8.3f} | {speed:>6.2f}x | {best:>5.2f}x | {cpu:>5.2f}x | "
                  f"{region_flops / 1e9:>9.1f} | {crop_flops / 1e9:>9.1f} | {flop_ratio:>6.2f}x | "
                  f"{speed / flop_ratio:>10.2f}")
        if args.profile:
            print("\nregion encoder by stage (median s):")
            for count, boxes in rows:
                stages = bench.stages(boxes)
                total = sum(stages.values())
                parts = ", ".join(f"{k} {v:.3f} ({100 * v / total:.0f}%)" for k, v in stages.items())
                print(f"{count:>5} boxes: {parts}")


if __name__ == "__main__":
    main()
