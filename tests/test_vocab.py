import pytest

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.data.vocab import clean_lvis_name, load_vocabulary


def test_coco_has_80_classes_with_official_ids():
    vocab = load_vocabulary("coco")
    assert len(vocab) == 80
    assert vocab.names[0] == "person" and vocab.category_ids[-1] == 90
    assert vocab.name_of(1) == "person"


def test_coco_ovd_split_is_48_base_17_novel():
    vocab = load_vocabulary("coco-ovd")
    assert len(vocab.splits["base"]) == 48 and len(vocab.splits["novel"]) == 17
    assert len(vocab) == 65
    assert not set(vocab.splits["base"]) & set(vocab.splits["novel"])
    novel = vocab.subset("novel")
    assert "cat" in novel.names and "person" not in novel.names and len(novel) == 17


def test_lvis_names_are_cleaned_and_grouped_by_frequency():
    vocab = load_vocabulary("lvis")
    assert len(vocab) == 1203
    assert {k: len(v) for k, v in vocab.splits.items()} == {"r": 337, "c": 461, "f": 405}
    assert all("_" not in n and "(" not in n for n in vocab.names)
    assert vocab.names[0] == "aerosol can" and "spray can" in vocab.synonyms[0]


def test_lvis_names_are_distinct_as_the_original_cleans_them():
    """Dropping the parenthesised text made bow, fish, octopus, pan and salmon collide (1198 names)."""
    names = load_vocabulary("lvis").names
    assert len(set(names)) == 1203
    assert {"bow weapon", "bow decorative ribbons", "bat animal"} <= set(names)


@pytest.mark.parametrize("raw, clean", [("bat_(animal)", "bat animal"), ("fire_hydrant", "fire hydrant"),
                                        ("arctic_(type_of_shoe)", "arctic type of shoe")])
def test_clean_lvis_name(raw, clean):
    assert clean_lvis_name(raw) == clean


def test_custom_from_string_and_file(tmp_path):
    vocab = load_vocabulary(" cat, dog ,fire  hydrant,")
    assert vocab.names == ("cat", "dog", "fire hydrant") and vocab.category_ids == (1, 2, 3)
    path = tmp_path / "classes.txt"
    path.write_text("star\n\n# a comment\nheart  # trailing comment\n")
    assert load_vocabulary(str(path)).names == ("star", "heart")


def test_a_builtin_split_keeps_its_official_ids_and_unknown_splits_are_named():
    """`--vocab world:novel`: OVR-CNN's target-only setting, the novel classes without the base ones."""
    novel = load_vocabulary("world:novel")
    assert novel.names == ("hexagon", "crescent", "lightning bolt", "teardrop", "hourglass")
    assert novel.category_ids == (9, 11, 14, 17, 20) and novel.splits["novel"] == novel.category_ids
    assert len(load_vocabulary("lvis:r")) == 337 and len(load_vocabulary("coco-ovd:base")) == 48
    with pytest.raises(RegionclipError, match=r"'world' has no split 'rare' \(its splits: world:base, world:novel\)"):
        load_vocabulary("world:rare")
    with pytest.raises(RegionclipError, match=r"'coco' has no split 'novel' \(its splits: none\)"):
        load_vocabulary("coco:novel")


def test_unknown_vocabulary_suggests_a_builtin():
    with pytest.raises(RegionclipError, match="did you mean 'lvis'"):
        load_vocabulary("lvsi")


def test_duplicate_and_empty_custom_vocabularies_are_refused(tmp_path):
    with pytest.raises(RegionclipError, match="duplicate"):
        load_vocabulary("cat,dog,cat")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(RegionclipError, match="empty"):
        load_vocabulary(str(empty))


def test_aligned_to_takes_ids_and_splits_from_annotation_categories():
    vocab = load_vocabulary("heart,star,kite")
    aligned = vocab.aligned_to([{"id": 7, "name": "Star", "split": "novel"},
                                {"id": 3, "name": "heart", "split": "base"}])
    assert aligned.category_ids == (3, 7, 8)
    assert aligned.splits == {"base": (3,), "novel": (7,)}
