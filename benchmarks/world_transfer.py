"""RegionCLIP's transfer claim on the synthetic world: detectors from the teacher vs from students.

Needs a folder made by `world_claim.py` (WORK/world, WORK/runs/world-rpn and
WORK/runs/seedS/student.pt). The finetune-world recipe was chosen on WORK/world-eval (seed 1), so
the figures here come from another held-out world, WORK/world-test (seed 3). For each seed S it
runs, as a user would:

    regionclip world generate WORK/world-test --images 200 --seed 3
    regionclip zeroshot WORK/world-test/images --vocab world --model world-tiny [--weights WORK/runs/seedS/student.pt] \\
        --proposals rpn --rpn WORK/runs/world-rpn/rpn.pt --gt WORK/world-test/annotations.json ...
    regionclip finetune finetune-world --set train.seed=S --set output=WORK/runs/finetune-teacher-S ...     (a)
    regionclip finetune finetune-world --set box_head.weights=WORK/runs/seedS/student.pt --set train.seed=S \\
        --set output=WORK/runs/finetune-student-S ...                                                            (b)

then prints AP50 all / base / novel of each on WORK/world-test, the mean and
min–max over seeds, and beside every figure its random-label level: the same detections with
each class drawn uniformly (`regionclip_cli.evaluation.chance.random_label_levels`), which is
what localisation alone earns. Finished steps are skipped on a rerun.

    python benchmarks/world_transfer.py --work /tmp/claim --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from world_claim import run

COLUMNS = ("AP50", "AP50_base", "AP50_novel")


def figures(detections: Path, ground_truth: dict) -> dict[str, float]:
    from regionclip_cli.data.vocab import load_vocabulary
    from regionclip_cli.evaluation import evaluate_detections
    from regionclip_cli.evaluation.chance import random_label_levels

    rows = json.loads(detections.read_text())
    vocabulary, images = load_vocabulary("world"), [image["id"] for image in ground_truth["images"]]
    measured = evaluate_detections(rows, ground_truth, vocabulary=vocabulary, image_ids=images).metrics
    chance = random_label_levels(rows, ground_truth, vocabulary=vocabulary, image_ids=images)
    return {**{k: measured[k] for k in COLUMNS}, **{f"random {k}": chance[k] for k in COLUMNS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a world_claim.py folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra finetune overrides")
    args = parser.parse_args()
    work, held_out = args.work, args.work / "world-test"
    run(["world", "generate", str(held_out), "--images", "200", "--seed", "3", "-q"], held_out / "captions.jsonl")
    rpn = work / "runs" / "world-rpn" / "rpn.pt"
    data = [f"data.train.annotations={work / 'world' / 'annotations.json'}",
            f"data.train.images={work / 'world' / 'images'}",
            f"data.test.annotations={held_out / 'annotations.json'}", f"data.test.images={held_out / 'images'}",
            f"rpn={rpn}", "device=cpu", *args.overrides]
    detections: dict[str, Path] = {}
    for seed in args.seeds:
        student = work / "runs" / f"seed{seed}" / "student.pt"
        for name, weights in (("zeroshot-teacher", None), (f"zeroshot-student-{seed}", student)):
            out = work / "runs" / name
            if name not in detections:
                run(["zeroshot", str(held_out / "images"), "--vocab", "world", "--model", "world-tiny",
                     *(["--weights", str(weights)] if weights else []), "--proposals", "rpn", "--rpn", str(rpn),
                     "--gt", str(held_out / "annotations.json"), "--min-size", "128", "--max-size", "128",
                     "--out", str(out), "--device", "cpu", "-q"], out / "metrics.json")
                detections[name] = out / "detections_coco.json"
        for name, weights in ((f"finetune-teacher-{seed}", None), (f"finetune-student-{seed}", student)):
            out = work / "runs" / name
            sets = [*data, f"train.seed={seed}", f"output={out}",
                    *([f"box_head.weights={weights}"] if weights else [])]
            run(["finetune", "finetune-world", *[a for kv in sets for a in ("--set", kv)], "-q"],
                out / "evaluation.json")
            detections[name] = out / "detections_coco.json"

    ground_truth = json.loads((held_out / "annotations.json").read_text())
    table = {name: figures(path, ground_truth) for name, path in detections.items()}
    print("\nAP50 on held-out world images (seed 3); in brackets the random-label level of the same detections")
    print("| model | " + " | ".join(COLUMNS) + " |")
    print("|---" * (1 + len(COLUMNS)) + "|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.1f} ({row['random ' + c]:.1f})" for c in COLUMNS) + " |")
    for kind in ("zeroshot-student", "finetune-teacher", "finetune-student"):
        names = [f"{kind}-{s}" for s in args.seeds]
        if len(names) > 1:
            print(f"{kind}, mean (min-max) over seeds {args.seeds}: " + "; ".join(
                f"{c} {statistics.mean(table[n][c] for n in names):.1f} "
                f"({min(table[n][c] for n in names):.1f}-{max(table[n][c] for n in names):.1f})" for c in COLUMNS))
    (work / "transfer.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
