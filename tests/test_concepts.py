"""The concepts stage: readers, parsing rules, selection, resumable counting, the command."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from regionclip_cli.cli.concepts import concepts as concepts_command
from regionclip_cli.stages.concepts.corpus import read_captions
from regionclip_cli.stages.concepts.counts import ConceptCounts
from regionclip_cli.stages.concepts.parse import ConceptParser, ParseConfig, load_spacy, resolve_stop_words
from regionclip_cli.stages.concepts.pool import select_concepts, vocabulary_index
from regionclip_cli.stages.concepts.stream import CountConfig, count_concepts
from regionclip_cli.core.errors import RegionclipError


@pytest.fixture(scope="module")
def parser() -> ConceptParser:
    return ConceptParser(ParseConfig())


def _read(paths):
    malformed, unreadable = [], []
    captions = list(read_captions([Path(p) for p in paths], malformed.append,
                                  lambda position, reason: unreadable.append(reason)))
    return captions, malformed, unreadable


# --- readers -------------------------------------------------------------------------------

def test_jsonl_both_shapes_keep_the_image(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "A dog."}\n\n'
                    '{"file_name": "b.jpg", "captions": ["A  cat\\n on a mat.", "Two cats."]}\n')
    captions, malformed, _ = _read([path])
    assert [(c.text, c.image, c.record) for c in captions] == [
        ("A dog.", "a.jpg", 0), ("A cat on a mat.", "b.jpg", 1), ("Two cats.", "b.jpg", 2)]
    assert malformed == []


def test_coco_captions_json_names_images_by_file(tmp_path):
    path = tmp_path / "captions_train2017.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "000007.jpg"}],
        "annotations": [{"image_id": 7, "id": 1, "caption": "A bus."}, {"image_id": 7, "id": 2}],
    }))
    captions, malformed, _ = _read([path])
    assert [(c.text, c.image) for c in captions] == [("A bus.", "000007.jpg")]
    assert [(m.line, "caption" in m.reason) for m in malformed] == [(2, True)]


def test_text_and_gzip_detected_by_content(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_text("A red car.\n\n  A blue   bike. \n")
    zipped = tmp_path / "b.captions"  # gzip without a .gz name is still read
    with gzip.open(zipped, "wt") as stream:
        stream.write("A green bus.\n")
    captions, _, _ = _read([plain, zipped])
    assert [c.text for c in captions] == ["A red car.", "A blue bike.", "A green bus."]
    assert [c.file_index for c in captions] == [0, 0, 1]


def test_malformed_lines_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"caption": "A dog."}\nnot json\n[1, 2]\n{"caption": 3}\n\xff\xfe\n'
                     b'{"caption": "A cat."}\n')
    captions, malformed, _ = _read([path])
    assert [c.text for c in captions] == ["A dog.", "A cat."]
    assert [m.line for m in malformed] == [2, 3, 4, 5]
    assert str(malformed[0]).startswith(f"{path}:2: not valid JSON")


def test_unreadable_file_is_reported_and_the_next_one_read(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    good = tmp_path / "good.txt"
    good.write_text("A dog.\n")
    captions, _, unreadable = _read([broken, good])
    assert [c.text for c in captions] == ["A dog."]
    assert len(unreadable) == 1 and "broken.json" in unreadable[0]


# --- parsing -------------------------------------------------------------------------------

def test_emoji_symbols_and_invisible_characters_are_not_part_of_concepts(tmp_path, parser):
    # Issue 12.14: "🐱 cat", "🔺 triangle" and "\u200b circle" were three concepts beside
    # "cat", "triangle" and "circle".
    path = tmp_path / "c.txt"
    path.write_text("🐱 cat\n🔺 triangle\n\u200b circle\nｃａｔ\n👍🏽\u200d\n1\ufe0f\u20e3 fire\u00adhydrant\n",
                    encoding="utf-8")
    captions, _, _ = _read([path])
    assert [c.text for c in captions] == ["cat", "triangle", "circle", "cat", "1 firehydrant"]
    counts = count_concepts([path], CountConfig(min_count=1))
    assert {"cat", "triangle", "circle"} <= set(counts.counts.counts)
    assert counts.counts.counts["cat"] == 2
    assert all(name.isascii() for name in counts.counts.counts)
    assert parser.parse(["A 🐶 dog next to a \u200bred ball 🎈."]) == [("dog", "ball")]


def test_concepts_follow_the_paper_rules(parser):
    results = parser.parse([
        "Two fire hydrants stand near the dogs.",
        "It is next to them and 42 of those.",
        "A group of people on a laptop computer keyboard.",
        "A picture of a stop sign.",
    ])
    assert results[0] == ("fire hydrant", "dog")
    assert results[1] == ()  # pronouns and numbers are no concepts
    assert results[2] == ("people", "laptop computer keyboard")  # "group" is a stop word
    assert results[3] == ("stop sign",)


def test_fast_path_matches_the_full_pipeline(parser):
    from regionclip_cli.stages.concepts.parse import concepts_in_doc

    full = load_spacy(full=True)
    captions = ["Several zebras graze near tall trees.", "The women were holding tennis rackets.",
                "A cat's paws rest on the computer mice.", "Children play with kites on beaches."]
    naive = [concepts_in_doc(full(c), parser.settings.stop_words) for c in captions]
    assert parser.parse(captions) == naive


def test_stop_words_are_configurable(tmp_path):
    assert resolve_stop_words("none") == frozenset()
    assert resolve_stop_words("dog,Fire  Hydrant") == {"dog", "fire hydrant"}
    extended = resolve_stop_words("default,dog")
    assert "dog" in extended and "picture" in extended
    words = tmp_path / "stop.txt"
    words.write_text("cat  # a comment\n\nmouse\n")
    assert resolve_stop_words(str(words)) == {"cat", "mouse"}
    with pytest.raises(RegionclipError, match="--stop-words"):
        resolve_stop_words("no-such-file")
    custom = ConceptParser(ParseConfig(stop_words=frozenset({"dog"})))
    assert custom.parse(["A dog and a picture."]) == [("picture",)]


def test_missing_spacy_model_says_what_to_install():
    with pytest.raises(RegionclipError, match="not installed; install"):
        load_spacy("xx_no_such_model")


# --- selection -----------------------------------------------------------------------------

def _counts(pairs: dict[str, int]) -> ConceptCounts:
    counts = ConceptCounts(min_count=1)
    counts.counts.update(pairs)
    return counts


def test_min_count_and_max_concepts():
    counts = _counts({"dog": 5, "cat": 5, "bus": 3, "kite": 1})
    assert [e.name for e in select_concepts(counts, 3)] == ["cat", "dog", "bus"]
    assert [e.name for e in select_concepts(counts, 1, max_concepts=2)] == ["cat", "dog"]
    assert select_concepts(counts, 6) == []


def test_vocab_filter_matches_lvis_synonyms():
    index = vocabulary_index("lvis")
    assert index["spray can"] == "aerosol can" and index["fire hydrant"] == "fireplug"
    counts = _counts({"spray can": 4, "dog": 4, "blorp": 4})
    kept = select_concepts(counts, 1, vocabulary=index)
    assert {(e.name, e.vocabulary_name) for e in kept} == {("spray can", "aerosol can"), ("dog", "dog")}
    custom = select_concepts(counts, 1, vocabulary=vocabulary_index("dog,cat"))
    assert [e.name for e in custom] == ["dog"]


def test_examples_are_kept_only_around_the_minimum_count(tmp_path):
    from regionclip_cli.stages.concepts.corpus import Caption

    counts = ConceptCounts(min_count=4, examples_per_concept=2)
    for i in range(6):
        counts.add(Caption(f"dog {i}", i, 0, i), ("dog",))
    counts.add(Caption("a cat", None, 0, 6), ("cat",))
    assert [e["caption"] for e in counts.examples["dog"]] == ["dog 2", "dog 3"]
    assert "cat" not in counts.examples  # never frequent enough: no memory spent on it
    assert counts.position == (0, 7)


# --- resumable counting --------------------------------------------------------------------

def _corpus(tmp_path: Path) -> list[Path]:
    first = tmp_path / "a.jsonl"
    lines = [json.dumps({"image": i, "caption": f"A dog and {i} red buses near a fire hydrant."})
             for i in range(30)]
    lines.insert(10, "{broken")
    first.write_text("\n".join(lines) + "\n")
    second = tmp_path / "b.txt.gz"
    with gzip.open(second, "wt") as stream:
        stream.write("\n".join(f"The cats sit on {i} benches." for i in range(30)) + "\n")
    return [first, second]


def test_resume_after_an_interruption_gives_the_same_counts(tmp_path, monkeypatch):
    paths = _corpus(tmp_path)
    settings = CountConfig(min_count=1, chunk_size=7, checkpoint_every_s=0.0)
    whole = count_concepts(paths, settings, checkpoint=tmp_path / "whole.json")

    calls = {"n": 0}
    original = ConceptParser.parse

    def interrupted(self, texts):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, texts)

    monkeypatch.setattr(ConceptParser, "parse", interrupted)
    checkpoint = tmp_path / "resumed.json"
    with pytest.raises(KeyboardInterrupt):
        count_concepts(paths, settings, checkpoint=checkpoint)
    monkeypatch.setattr(ConceptParser, "parse", original)
    saved = json.loads(checkpoint.read_text())
    assert 0 < saved["captions"] < 60 and saved["finished"] is False

    resumed_at = []
    resumed = count_concepts(paths, settings, checkpoint=checkpoint, on_resume=resumed_at.append)
    assert resumed_at == [saved["captions"]]
    assert resumed.counts.counts == whole.counts.counts
    assert resumed.counts.captions == whole.counts.captions == 60
    assert resumed.counts.malformed == whole.counts.malformed == 1
    assert resumed.counts.examples == whole.counts.examples
    assert whole.counts.counts["dog"] == 30 and whole.counts.counts["fire hydrant"] == 30


def test_changed_inputs_are_refused_unless_overwrite(tmp_path):
    # Issue 12.1 for concepts: the counts of another corpus or settings are not thrown away silently.
    paths = _corpus(tmp_path)
    settings = CountConfig(min_count=1)
    checkpoint = tmp_path / "ck.json"
    count_concepts(paths, settings, checkpoint=checkpoint)
    with pytest.raises(RegionclipError, match=r"its settings differ: min_count.*--overwrite"):
        count_concepts(paths, CountConfig(min_count=2), checkpoint=checkpoint)
    with open(paths[0], "a") as stream:
        stream.write(json.dumps({"caption": "A kite."}) + "\n")
    with pytest.raises(RegionclipError, match=r"holds the concept counts of another run \(its caption files differ"):
        count_concepts(paths, settings, checkpoint=checkpoint)
    resumed_at = []
    again = count_concepts(paths, settings, checkpoint=checkpoint, on_resume=resumed_at.append, overwrite=True)
    assert resumed_at == [] and again.counts.counts["kite"] == 1 and again.counts.captions == 61


def test_duplicates_are_parsed_once(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("A dog on a sofa.\n" * 50 + "A cat.\n")
    result = count_concepts([path], CountConfig(min_count=1, chunk_size=8))
    assert result.parsed == 2 and result.counts.counts["dog"] == 50


# --- the command ---------------------------------------------------------------------------

def _app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("concepts")(concepts_command)
    app.command("other")(lambda: None)  # keeps `concepts` a named subcommand, as in cli.py
    return app


def test_command_writes_the_pool_and_exits_1_on_skipped_lines(tmp_path):
    paths = _corpus(tmp_path)
    out = tmp_path / "pool"
    result = CliRunner().invoke(_app(), ["concepts", *map(str, paths), "--out", str(out), "--min-count", "30",
                                         "--no-embed", "--workers", "1", "-q"])
    assert result.exit_code == 1, result.output
    assert "a.jsonl:11" in result.output
    document = json.loads((out / "concepts.json").read_text())
    assert {c["name"]: c["count"] for c in document["concepts"]} == {
        "dog": 30, "bus": 30, "fire hydrant": 30, "cat": 30, "bench": 30}
    assert document["malformed_lines"] == 1 and document["captions"] == 60
    assert document["embeddings"] is None and len(document["inputs"]) == 2
    assert document["regionclip_version"] and document["settings"]["text_normalisation"]
    assert document["model_identity"] is None and document["templates"] is None
    assert len(document["concepts"][0]["examples"]) == 3
    assert (out / "concepts.txt").read_text().splitlines() == [c["name"] for c in document["concepts"]]
    assert not (out / "concept_embeddings.pt").exists()


def test_command_clean_input_exits_0_and_bad_input_is_a_usage_error(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("A dog.\nTwo dogs.\n")
    runner = CliRunner()
    ok = runner.invoke(_app(), ["concepts", str(path), "--out", str(tmp_path / "o"), "--min-count", "2",
                                "--no-embed", "--workers", "1", "-q"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o" / "concepts.txt").read_text() == "dog\n"
    missing = runner.invoke(_app(), ["concepts", str(tmp_path / "none.txt"), "--no-embed", "-q",
                                     "--out", str(tmp_path / "o2")])
    assert isinstance(missing.exception, RegionclipError) and missing.exception.exit_code == 2
    bad = runner.invoke(_app(), ["concepts", str(path), "--min-count", "0", "--no-embed"])
    assert bad.exit_code == 2


# --- the embedding model comes from the inputs when they name it (issue 13.3) -------------------

def test_world_captions_are_embedded_by_the_world_teacher(small_world, tmp_path):
    from regionclip_cli.modeling.clip import file_sha256, shipped_weights
    from regionclip_cli.stages.concepts.embed import EmbedConfig, model_from_inputs

    captions = small_world / "captions.jsonl"
    settings, origin = model_from_inputs(EmbedConfig(), [captions], tmp_path)
    assert settings.model == "world-tiny" and "synthetic world" in origin
    assert model_from_inputs(EmbedConfig(model="RN50"), [captions], tmp_path)[0].model == "RN50"
    plain = tmp_path / "plain.txt"
    plain.write_text("A dog.\n")
    assert model_from_inputs(EmbedConfig(), [captions, plain], tmp_path) == (EmbedConfig(), None)
    # A rerun into a folder keeps the model its pool was embedded with.
    shipped = f"world-tiny@sha256:{file_sha256(shipped_weights('world-tiny'))[:16]}"
    (tmp_path / "concepts.json").write_text(json.dumps({"model_identity": shipped}))
    again, origin = model_from_inputs(EmbedConfig(), [plain], tmp_path)
    assert again.model == "world-tiny" and "concepts.json" in origin


@pytest.mark.slow
def test_concepts_of_a_world_without_model_option_embed_with_world_tiny(small_world, tmp_path):
    from regionclip_cli.stages.concepts import Callbacks, ConceptsConfig, EmbedConfig, build_concept_pool

    chosen = []
    report = build_concept_pool(
        ConceptsConfig([small_world / "captions.jsonl"], tmp_path / "pool", CountConfig(min_count=1, workers=1),
                   embed=EmbedConfig(templates="single", device="cpu", cache_dir=tmp_path / "cache")),
        Callbacks(on_model=lambda name, origin: chosen.append(name)), progress=False)
    assert chosen == ["world-tiny"] and report.model_identity.startswith("world-tiny@")


def test_a_pool_embedded_with_other_weights_names_them(tmp_path):
    from regionclip_cli.stages.concepts.embed import EmbedConfig, model_from_inputs

    (tmp_path / "concepts.json").write_text(json.dumps({"model_identity": "RN50@pretrained:openai"}))
    settings, _ = model_from_inputs(EmbedConfig(), [tmp_path / "c.txt"], tmp_path)
    assert (settings.model, settings.pretrained) == ("RN50", "openai")
    (tmp_path / "concepts.json").write_text(json.dumps({"model_identity": "RN50@sha256:0123456789abcdef"}))
    with pytest.raises(RegionclipError, match="embedded with RN50@sha256:0123456789abcdef .*--weights"):
        model_from_inputs(EmbedConfig(), [tmp_path / "c.txt"], tmp_path)
