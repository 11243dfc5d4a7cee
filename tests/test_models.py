"""load_clip: every weight source, and a one-line error for every way it can go wrong."""

from __future__ import annotations

import json
import shutil
import warnings

import open_clip
import pytest
import torch

from regionclip_cli.modeling import clip as models
from regionclip_cli.modeling.checkpoints import Checkpoint, save_checkpoint
from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.modeling.clip import LoadedClip, is_region_capable, load_clip

TINY = "test-models-tiny"
TINY_WIDE = "test-models-tiny-wide"  # same family, another embedding width: the "wrong architecture"


def _config(embed_dim: int) -> dict:
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


@pytest.fixture(scope="module", autouse=True)
def tiny_configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(_config(32)))
    (folder / f"{TINY_WIDE}.json").write_text(json.dumps(_config(48)))
    models.register_model_configs()
    open_clip.add_model_config(folder)


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model(TINY).eval()


def _encode(clip: LoadedClip, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return clip.model.encode_image(image.to(clip.device))


def _same_weights(clip: LoadedClip, reference: torch.nn.Module) -> bool:
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(_encode(clip, image), reference.encode_image(image), atol=1e-5)


def test_bare_state_dict(tmp_path, reference):
    path = tmp_path / "bare.pt"
    torch.save(reference.state_dict(), path)
    clip = load_clip(TINY, weights=path)
    assert _same_weights(clip, reference)
    assert not clip.model.training
    assert clip.name == TINY and clip.embed_dim == 32 and clip.image_size == 64
    assert clip.input_min_size is None and clip.input_max_size is None
    assert clip.tokenizer(["a red circle"]).shape == (1, 16)


def test_wrapped_state_dict_with_module_prefix(tmp_path, reference):
    path = tmp_path / "ddp.pt"
    wrapped = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": wrapped}, path)
    assert _same_weights(load_clip(TINY, weights=path), reference)


def test_our_checkpoint_fp16_with_metadata(tmp_path, reference):
    path = tmp_path / "ours.pt"
    half = {k: v.half() if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    save_checkpoint(path, Checkpoint("clip", TINY, half, {"input_min_size": 320, "input_max_size": 512}))
    clip = load_clip(weights=path)  # --model left at its default: the checkpoint names the model
    assert clip.name == TINY
    assert clip.model.visual.conv1.weight.dtype == torch.float32
    assert clip.input_min_size == 320 and clip.input_max_size == 512
    image = torch.randn(1, 3, 64, 64)
    assert torch.allclose(_encode(clip, image), reference.encode_image(image), atol=1e-2)


def test_our_checkpoint_conflicting_model(tmp_path, reference):
    path = tmp_path / "ours.pt"
    save_checkpoint(path, Checkpoint("clip", TINY, reference.state_dict()))
    with pytest.raises(RegionclipError, match=f"checkpoint of {TINY}.*--model RN50"):
        load_clip("RN50", weights=path)


class _OpenAIStyle(torch.nn.Module):
    """Mimics OpenAI's JIT archives: CLIP's parameters at the top level plus three metadata buffers."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, param in clip.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.register_buffer("input_resolution", torch.tensor(64))
        self.register_buffer("context_length", torch.tensor(16))
        self.register_buffer("vocab_size", torch.tensor(49408))

    def forward(self, image):
        return self.visual(image)


def test_torchscript_archive(tmp_path, reference):
    path = tmp_path / "RN-openai.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(_OpenAIStyle(reference), torch.zeros(1, 3, 64, 64)), str(path))
    assert models._is_torchscript_archive(path)
    clip = load_clip(TINY, weights=path)
    assert clip.model.visual.conv1.weight.shape == reference.visual.conv1.weight.shape
    assert _same_weights(clip, reference)  # the image tower has no GELU, so QuickGELU does not matter
    assert clip.identity.startswith(f"{TINY}@sha256:")


def test_torchscript_archive_of_another_model(tmp_path):
    path = tmp_path / "other.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(path))
    with pytest.raises(RegionclipError, match=r"other\.pt.*do not fit --model .*missing key"):
        load_clip(TINY, weights=path)


@pytest.mark.parametrize("content", [b"\x00\x01garbage" * 100, json.dumps({"a": 1}).encode()])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "notes.bin"
    path.write_bytes(content)
    with pytest.raises(RegionclipError, match=r"notes\.bin: not a PyTorch checkpoint"):
        load_clip(TINY, weights=path)


def test_pickle_of_non_tensors_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(RegionclipError, match=r"list\.pt: holds no state dict"):
        load_clip(TINY, weights=path)


def test_missing_weights_file(tmp_path):
    with pytest.raises(RegionclipError, match="no such file"):
        load_clip(TINY, weights=tmp_path / "absent.pt")


def test_wrong_architecture_names_key_shapes_and_likely_model(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "wide.pt"
    torch.save(open_clip.create_model(TINY_WIDE).state_dict(), path)
    with pytest.raises(RegionclipError) as caught:
        load_clip(TINY, weights=path)
    message = str(caught.value)
    assert "wide.pt" in message and "\n" not in message
    assert "is [32, 48] in the file but [32, 32]" in message  # the first mismatching key, both shapes
    assert TINY_WIDE in message  # the architecture the file belongs to


def test_vit_name_is_refused_with_supported_list():
    assert not is_region_capable("ViT-B-32") and is_region_capable("RN50x4") and is_region_capable(TINY)
    with pytest.raises(RegionclipError, match=r"ViT-B-32.*not a ModifiedResNet.*RN50, .*RN101"):
        load_clip("ViT-B-32", random_init=True)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(RegionclipError, match=r"rn50x5: no such open_clip model; did you mean RN50x4"):
        load_clip("rn50x5", random_init=True)


def test_unknown_pretrained_tag_lists_valid_tags():
    with pytest.raises(RegionclipError, match=r"--pretrained laion: .*valid tags: openai, yfcc15m, cc12m"):
        load_clip("RN50", pretrained="laion")


def test_failed_download_suggests_weights(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    monkeypatch.setattr(models, "_reachable", lambda host, timeout=3.0: True)  # reachable, then fails
    with pytest.raises(RegionclipError, match=r"downloading the weights failed.*unreachable.*--weights FILE"):
        load_clip("RN50", pretrained="openai")


def test_no_weights_is_an_error_not_random():
    with pytest.raises(RegionclipError, match=r"--model RN50 has no weights.*--pretrained openai.*--weights FILE"):
        load_clip("RN50")
    with pytest.raises(RegionclipError, match="either --pretrained or --weights"):
        load_clip(TINY, pretrained="openai", weights="x.pt")


def test_shipped_checkpoint_is_the_default(tmp_path, monkeypatch, reference):
    save_checkpoint(tmp_path / f"{TINY}.pt", Checkpoint("clip", TINY, reference.state_dict()))
    monkeypatch.setattr(models, "SHIPPED_WEIGHTS_DIR", tmp_path)
    clip = load_clip(TINY)
    assert _same_weights(clip, reference)
    assert clip.identity == f"{TINY}@sha256:{models.file_sha256(tmp_path / f'{TINY}.pt')[:16]}"


def test_identity_is_stable_and_tracks_the_source(tmp_path, reference):
    first, second = tmp_path / "a.pt", tmp_path / "copy" / "a.pt"
    torch.save(reference.state_dict(), first)
    second.parent.mkdir()
    shutil.copyfile(first, second)  # the identity hashes the file's bytes, not its path
    assert load_clip(TINY, weights=first).identity == load_clip(TINY, weights=second).identity
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    torch.save(changed, second)
    assert load_clip(TINY, weights=first).identity != load_clip(TINY, weights=second).identity
    assert load_clip(TINY, random_init=True).identity == f"{TINY}@random-init"


def _detectron2_file(path, with_text: bool = True):
    """A file shaped like the original RegionCLIP's releases, from world-tiny's weights."""
    state = load_clip("world-tiny").model.state_dict()
    model = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key == "logit_scale":
            continue  # detectron2's FrozenBatchNorm keeps no counter; lang_encoder has no logit_scale
        if key.startswith("visual."):
            model[f"backbone.{key[len('visual.'):]}"] = value
            model[f"teacher_backbone.{key[len('visual.'):]}"] = value + 1
        elif with_text:
            model[f"lang_encoder.{key}"] = value
    model["offline_backbone.stem.conv1.weight"] = torch.zeros(4, 3, 1, 1)
    model["offline_proposal_generator.rpn_head.conv.weight"] = torch.zeros(4, 4, 3, 3)
    model["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, 128)
    torch.save({"model": model, "iteration": 5}, path)
    return state


def test_detectron2_regionclip_checkpoint(tmp_path):
    path = tmp_path / "regionclip_pretrained-world.pth"
    state = _detectron2_file(path)
    clip = load_clip(weights=path)  # the model is recognised from the image tower's shapes
    assert clip.name.startswith("world-tiny") and clip.has_text_tower and not clip.notes
    image = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))  # world-tiny's input side
    reference = open_clip.create_model("world-tiny", force_quick_gelu=True).eval()
    reference.load_state_dict(state)
    tokens = clip.tokenizer(["a red circle"])
    with torch.no_grad():
        torch.testing.assert_close(clip.model.encode_image(image), reference.encode_image(image))
        torch.testing.assert_close(clip.model.encode_text(tokens), reference.encode_text(tokens))


def test_detectron2_checkpoint_without_a_text_tower_says_so(tmp_path):
    from regionclip_cli.modeling.text import embed_names

    path = tmp_path / "regionclip_finetuned-world.pth"
    _detectron2_file(path, with_text=False)
    clip = load_clip(weights=path)
    assert not clip.has_text_tower and "no lang_encoder" in clip.notes[0] and "--class-embeddings" in clip.notes[0]
    with pytest.raises(RegionclipError, match="--class-embeddings"):
        embed_names(clip, ["circle"], ["{}"], cache_dir=tmp_path, progress=False)


def test_class_embedding_files_of_the_original(cli, small_world, tmp_path, monkeypatch):
    monkeypatch.setenv("REGIONCLIP_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "regionclip_finetuned-world.pth"
    _detectron2_file(weights, with_text=False)
    from regionclip_cli.data.vocab import load_vocabulary
    from regionclip_cli.modeling.text import embed_names

    names = load_vocabulary("world").names
    table = embed_names(load_clip("world-tiny"), names, ["a photo of a {}."], cache_dir=tmp_path, progress=False)
    plain = tmp_path / "world_emb.pth"
    torch.save(table * 7.0, plain)  # the original's files are not normalised
    image = sorted((small_world / "images").iterdir())[0]
    common = ["zeroshot", image, "--weights", weights, "--device", "cpu", "-q", "--num-proposals", "10"]
    code, _, err = cli(*common, "--vocab", "world", "--class-embeddings", plain, "--out", tmp_path / "a")
    assert code == 0, err
    assert "without a text tower" in err
    code, _, err = cli(*common, "--vocab", "circle,square", "--class-embeddings", plain, "--out", tmp_path / "b")
    assert code == 2 and "20 class embeddings" in err and "2 classes" in err
    narrow = tmp_path / "narrow.pth"
    torch.save(torch.randn(20, 640), narrow)
    code, _, err = cli(*common, "--vocab", "world", "--class-embeddings", narrow, "--out", tmp_path / "c")
    assert code == 2 and "640-d" in err and "1024 = RN50, 640 = RN50x4, 512" in err


def test_pretrained_tag_offline_fails_fast_with_one_line(monkeypatch):
    import socket
    import time

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    started = time.perf_counter()
    with pytest.raises(RegionclipError) as error:
        load_clip("RN50", pretrained="openai")
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert "cannot be reached" in message and "--weights FILE" in message and "\n" not in message
