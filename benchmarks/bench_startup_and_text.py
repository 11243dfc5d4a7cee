"""`regionclip --help` wall time, and LVIS vocabulary embedding cold vs cached.

    python benchmarks/bench_startup_and_text.py                      # world-tiny, 81 prompts
    python benchmarks/bench_startup_and_text.py --model RN50 --templates single

The help figure is the median of several fresh `regionclip --help` processes, next to a bare
`python -c pass` baseline measured in the same run. The embedding figure times `embed_names` on the
1203 LVIS names into an empty cache (cold), then again (cached: one file read); RN50 has no
pretrained weights offline, so it runs with random weights, which cost the same time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def median_seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="world-tiny")
    parser.add_argument("--templates", default="ensemble")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    baseline = median_seconds([sys.executable, "-c", "pass"], args.repeats)
    help_time = median_seconds([sys.executable, "-m", "regionclip_cli", "--help"], args.repeats)
    print(f"python -c pass        {baseline:7.3f} s (median of {args.repeats})")
    print(f"regionclip --help     {help_time:7.3f} s  ({help_time / baseline:.1f}x a bare interpreter)")

    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.modeling.text import embed_names, resolve_templates
    from regionclip_cli.data.vocab import load_vocabulary

    clip = load_clip(args.model, device=args.device, random_init=args.model != "world-tiny")
    names = load_vocabulary("lvis").names
    templates = resolve_templates(args.templates)
    cache = Path(tempfile.mkdtemp(prefix="regionclip-bench-cache-"))
    try:
        started = time.perf_counter()
        cold = embed_names(clip, names, templates, cache_dir=cache, progress=True)
        cold_s = time.perf_counter() - started
        cached_times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            cached = embed_names(clip, names, templates, cache_dir=cache, progress=False)
            cached_times.append(time.perf_counter() - started)
        assert (cold == cached).all()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cached_s = statistics.median(cached_times)
    prompts = len(names) * len(templates)
    print(f"LVIS {len(names)} names x {len(templates)} templates = {prompts:,} prompts, {clip.identity}")
    print(f"  cold   {cold_s:9.3f} s  ({prompts / cold_s:,.0f} prompts/s)")
    print(f"  cached {cached_s:9.4f} s  (median of {args.repeats}; {cold_s / cached_s:,.0f}x faster)")


if __name__ == "__main__":
    main()
