"""`regionclip pseudolabel`: sharded, resumable without duplicates or gaps."""

import json
from pathlib import Path


from regionclip_cli.synthetic.categories import WORLD_CATEGORIES


def records(out):
    rows = []
    for shard in sorted((out / "shards").iterdir()):
        rows += [json.loads(line) for line in shard.read_text().splitlines()]
    return rows


def test_sharded_labels_resume_without_duplicates_or_gaps(cli, small_world, world_concepts, tmp_path):
    out = tmp_path / "labels"
    args = ["pseudolabel", small_world / "images", "--concepts", world_concepts, "--model", "world-tiny",
            "--out", out, "--regions", "10", "--shard-size", "3", "--pictures", "2", "--device", "cpu", "-q"]
    code, stdout, err = cli(*args)
    assert code == 0, err
    first = records(out)
    assert len(first) == 8 and len({r["file"] for r in first}) == 8
    assert all(len(r["regions"]) == 10 for r in first)
    names = {c.name for c in WORLD_CATEGORIES}
    for region in first[0]["regions"]:
        assert region["concept"] in names and 0 < region["score"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 8 and summary["regions"] == 80
    assert sum(summary["label_histogram"].values()) <= 80
    assert len(list((out / "pictures").iterdir())) == 2

    kept = out / "shards" / "shard-00000.jsonl"
    before = kept.stat().st_mtime_ns
    (out / "shards" / "shard-00001.jsonl").unlink()  # as if interrupted before shard 1 was written
    code, _, err = cli(*args)
    assert code == 0 and "resuming" in err
    assert records(out) == first
    assert kept.stat().st_mtime_ns == before  # finished shards are not redone

    code, _, err = cli(*[a if a != "10" else "12" for a in args])
    assert code == 2 and "other settings" in err and "regions_per_image" in err
    code, _, _ = cli(*[a if a != "10" else "12" for a in args], "--overwrite")
    assert code == 0 and all(len(r["regions"]) == 12 for r in records(out))


def test_concepts_from_another_model_are_refused(cli, small_world, world_concepts, tmp_path):
    code, _, err = cli("pseudolabel", small_world / "images", "--concepts", world_concepts, "--model", "RN50",
                       "--out", tmp_path / "x", "-q")
    assert code == 2 and "Traceback" not in err


def test_teacher_comes_from_the_concept_file_when_not_given(cli, small_world, world_concepts, tmp_path):
    """The concept file records world-tiny; pseudolabel used to default to RN50 and fail."""
    out = tmp_path / "labels"
    code, _, err = cli("pseudolabel", small_world / "images", "--concepts", world_concepts, "--out", out,
                       "--regions", "4", "--pictures", "1", "--device", "cpu", "-q")
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["settings"]["model_identity"].startswith("world-tiny@")
    assert "random proposals" in err


def test_ctrl_c_says_what_was_written_and_the_rerun_finishes(cli, small_world, world_concepts, tmp_path, monkeypatch):
    from regionclip_cli.stages.pseudolabel import stage

    out = tmp_path / "labels"
    args = ["pseudolabel", small_world / "images", "--concepts", world_concepts, "--out", out, "--regions", "3",
            "--shard-size", "4", "--pictures", "0", "--device", "cpu", "-q"]
    real, calls = stage.label_records, []

    def interrupted_in_the_second_shard(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(stage, "label_records", interrupted_in_the_second_shard)
    code, _, err = cli(*args)
    assert code == 130 and "1 of 2 shards are written" in err and "rerun the same command" in err
    monkeypatch.setattr(stage, "label_records", real)
    code, _, err = cli(*args)
    assert code == 0 and len(records(out)) == 8


def test_captions_restrict_each_images_labels_to_the_concepts_it_names(cli, small_world, world_concepts, tmp_path):
    from regionclip_cli.stages.concepts.parse import ConceptParser, ParseConfig

    out = tmp_path / "labels"
    captions = small_world / "captions.jsonl"
    code, _, err = cli("pseudolabel", small_world / "images", "--concepts", world_concepts, "--model", "world-tiny",
                       "--captions", captions, "--out", out, "--regions", "10", "--pictures", "0",
                       "--device", "cpu", "-q")
    assert code == 0, err
    rows = {Path(json.loads(line)["file"]).name: json.loads(line)["captions"]
            for line in captions.read_text().splitlines()}
    parser = ConceptParser(ParseConfig())
    assert json.loads((out / "manifest.json").read_text())["settings"]["candidates"].startswith("captions:")
    labelled = set()
    for record in records(out):
        named = {c for caption in parser.parse(rows[Path(record["file"]).name]) for c in caption}
        used = {region["concept"] for region in record["regions"]}
        assert used <= named, (record["file"], used - named)
        labelled |= used
    assert len(labelled) > 3


def test_rpn_proposals_are_the_best_boxes_after_nms_and_recorded(cli, small_world, world_concepts, tmp_path):
    import torch
    from torchvision.ops import box_iou

    from regionclip_cli.modeling.checkpoints import save_checkpoint
    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.modeling.rpn import RPNConfig, build_proposal_network, rpn_checkpoint

    torch.manual_seed(0)
    clip = load_clip("world-tiny", random_init=True)
    network = build_proposal_network(RPNConfig(anchor_sizes=[16, 32, 64]), clip_visual=clip.model.visual,
                                     mean=clip.mean, std=clip.std)
    rpn = tmp_path / "rpn.pt"
    save_checkpoint(rpn, rpn_checkpoint(network, "world-tiny", {}))
    out = tmp_path / "labels"
    args = ["pseudolabel", small_world / "images", "--concepts", world_concepts, "--model", "world-tiny",
            "--rpn", rpn, "--regions", "6", "--out", out, "--pictures", "0", "--device", "cpu", "-q"]
    code, _, err = cli(*args)
    assert code == 0, err
    assert "random proposals" not in err
    setting = json.loads((out / "manifest.json").read_text())["settings"]["proposals"]
    assert setting.startswith("rpn:") and setting.endswith("@nms0.5,6")
    rows = records(out)
    assert len(rows) == 8 and all(1 <= len(r["regions"]) <= 6 for r in rows)
    assert sum(len(r["regions"]) for r in rows) > 8  # an untrained RPN still proposes several boxes
    for row in rows:
        boxes = torch.tensor([region["box"] for region in row["regions"]])
        overlaps = box_iou(boxes, boxes).fill_diagonal_(0)
        assert overlaps.max() <= 0.5 + 1e-4  # NMS at --rpn-nms held, in original pixels too

    code, _, err = cli(*args, "--rpn-nms", "0.7")
    assert code == 2 and "other settings" in err
    code, _, err = cli(*args, "--boxes", small_world / "annotations.json", "--overwrite")
    assert code == 2 and "--boxes and --rpn" in err and "Traceback" not in err
