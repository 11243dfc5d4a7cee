"""The synthetic world: determinism, valid COCO, tight boxes, truthful captions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.synthetic.captions import caption_corpus, mentioned_categories
from regionclip_cli.synthetic.categories import WORLD_CATEGORIES, base_names, novel_names, pluralize
from regionclip_cli.synthetic.render import draw_background, draw_layout, image_rng, render_scene, sample_layout
from regionclip_cli.synthetic.world import WorldConfig, generate_world, iter_world, world_image


def test_categories_and_split():
    assert len(WORLD_CATEGORIES) >= 16
    assert [c.id for c in WORLD_CATEGORIES] == list(range(1, len(WORLD_CATEGORIES) + 1))
    assert set(base_names()) | set(novel_names()) == {c.name for c in WORLD_CATEGORIES}
    assert not set(base_names()) & set(novel_names())
    assert 0.2 <= len(novel_names()) / len(WORLD_CATEGORIES) <= 0.3
    forms = [f for c in WORLD_CATEGORIES for f in c.surface_forms]
    assert len(forms) == len(set(forms)), "a word must name one category only"
    assert [pluralize(w) for w in ("box", "daisy", "cross", "plus sign")] == ["boxes", "daisies", "crosses", "plus signs"]


def test_image_is_independent_of_world_size():
    small = list(iter_world(WorldConfig(num_images=3, seed=5)))
    large = list(iter_world(WorldConfig(num_images=6, seed=5)))
    for a, b in zip(small, large):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert a.objects == b.objects and a.captions == b.captions
    other_seed = world_image(WorldConfig(seed=6), 0)
    assert not np.array_equal(np.asarray(other_seed.image), np.asarray(small[0].image))


def test_boxes_are_inside_and_tight():
    size = 224
    for index in range(20):
        layout = sample_layout(image_rng(3, index), size)
        image, objects = draw_layout(layout)
        pixels = np.asarray(image).astype(int)
        background = draw_background(layout.background, size, layout.noise_seed).astype(int)
        changed = (pixels != background).any(-1)
        assert 1 <= len(objects) <= 6
        for obj in objects:
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            assert max(x2 - x1, y2 - y1) >= 13
            inside = changed[int(y1):int(y2), int(x1):int(x2)]
            # every border row and column of the box holds drawn pixels (of this or a later shape)
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        if len(objects) == 1:  # nothing drawn outside the only box
            x1, y1, x2, y2 = map(int, objects[0].box)
            outside = changed.copy()
            outside[y1:y2, x1:x2] = False
            assert not outside.any()


def test_captions_are_true():
    for item in iter_world(WorldConfig(num_images=40, seed=11)):
        present = {o.category_id for o in item.objects}
        assert 3 <= len(item.captions) <= 5
        for caption in item.captions:
            named = mentioned_categories(caption)
            assert named, caption
            assert named <= present, (caption, present)


def test_caption_corpus_is_varied_and_names_objects():
    captions = list(caption_corpus(5000, seed=1))
    assert len(captions) == 5000
    assert len(set(captions)) / len(captions) > 0.95
    assert all(mentioned_categories(c) for c in captions)
    assert captions[:50] == list(caption_corpus(50, seed=1))
    assert captions[:50] != list(caption_corpus(50, seed=2))


def test_generate_world_writes_valid_coco(tmp_path):
    summary = generate_world(tmp_path, WorldConfig(num_images=6, seed=2, workers=1), progress=False)
    coco = COCO(str(tmp_path / "annotations.json"))
    assert len(coco.getImgIds()) == 6 and summary.num_images == 6
    assert len(coco.getAnnIds()) == summary.num_objects
    assert {c["id"] for c in coco.loadCats(coco.getCatIds())} == {c.id for c in WORLD_CATEGORIES}
    assert all(c["split"] in ("base", "novel") and "synonyms" in c for c in coco.dataset["categories"])
    lines = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert [line["image_id"] for line in lines] == sorted(coco.getImgIds())
    for line in lines:
        image = coco.loadImgs(line["image_id"])[0]
        assert (tmp_path / line["file"]) == tmp_path / "images" / image["file_name"]
        assert (tmp_path / line["file"]).is_file()
    scene = render_scene(2, 4)
    first = coco.loadAnns(coco.getAnnIds(imgIds=5))
    assert [a["category_id"] for a in first] == [o.category_id for o in scene.objects]
    x1, y1, x2, y2 = scene.objects[0].box
    assert first[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert summary.num_base_categories + summary.num_novel_categories == len(WORLD_CATEGORIES)


def test_bad_config_is_a_user_error(tmp_path):
    with pytest.raises(RegionclipError, match="captions"):
        generate_world(tmp_path, WorldConfig(num_images=2, min_captions=4, max_captions=2), progress=False)


def test_world_generate_command(tmp_path):
    from typer.testing import CliRunner

    from regionclip_cli.cli.world import app

    result = CliRunner().invoke(app, ["generate", str(tmp_path / "w"), "--images", "3", "--seed", "4", "-q"])
    assert result.exit_code == 0, result.output
    assert "3" in result.output and "15 base + 5 novel" in result.output
    assert len(list((tmp_path / "w" / "images").glob("*.png"))) == 3


def test_min_object_size_sets_the_smallest_shape():
    sizes = [max(o.box[2] - o.box[0], o.box[3] - o.box[1])
             for i in range(30) for o in render_scene(5, i, 224, 1, 4, min_object_size=48).objects]
    assert min(sizes) >= 46 and max(sizes) <= 113
    default = [max(o.box[2] - o.box[0], o.box[3] - o.box[1]) for i in range(30) for o in render_scene(5, i).objects]
    assert min(default) < 30  # the default world keeps its small shapes
    with pytest.raises(RegionclipError, match="--min-object-size"):
        WorldConfig(min_object_size=200).check()


def test_generate_refuses_a_non_empty_folder_and_overwrite_replaces_cleanly(tmp_path, cli):
    """Issue 13.4: a second world into the same folder never leaves old images beside new annotations."""
    out = tmp_path / "w"
    generate_world(out, WorldConfig(num_images=5, seed=1, workers=1), progress=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RegionclipError, match="--overwrite"):
        generate_world(out, WorldConfig(num_images=3, seed=2, workers=1), progress=False)
    assert len(list((out / "images").glob("*.png"))) == 5  # untouched
    code, _, err = cli("world", "generate", out, "--images", "3", "-q")
    assert code == 2 and "--overwrite" in err

    generate_world(out, WorldConfig(num_images=3, seed=2, workers=1), progress=False, overwrite=True)
    coco = json.loads((out / "annotations.json").read_text())
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(i["file_name"] for i in coco["images"])
    assert len((out / "captions.jsonl").read_text().splitlines()) == 3
    assert (out / "notes.txt").read_text() == "mine"  # not a world file: kept

    (out / "images" / "photo.jpg").write_bytes(b"x")  # never deleted by --overwrite
    with pytest.raises(RegionclipError, match="photo.jpg"):
        generate_world(out, WorldConfig(num_images=2, seed=3, workers=1), progress=False, overwrite=True)
    assert (out / "images" / "photo.jpg").exists()


def test_progress_rate_is_the_mean_rate_of_bursty_work():
    """Issue 12.17: a process pool hands back finished images 32 at a time; the bar's img/s must be
    the real rate (items / elapsed time), not rich's estimate from the burst's microseconds."""
    from rich.progress import Progress

    from regionclip_cli.core.progress import RateColumn

    clock = [0.0]
    bar = Progress(RateColumn(), get_time=lambda: clock[0], disable=True)
    task_id = bar.add_task("rendering", total=64, unit="img")
    for burst_end in (2.0, 4.0):  # 32 images every 2 s: 16 img/s
        clock[0] = burst_end
        for _ in range(32):
            clock[0] += 1e-6
            bar.advance(task_id)
    text = RateColumn().render(bar.tasks[0]).plain
    assert text.startswith("16.0 img/s"), text
