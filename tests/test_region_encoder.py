"""RegionEncoder: equal to CLIP on a whole-image box, batch- and order-independent, trainable."""

from __future__ import annotations

import copy
from unittest import mock
import json

import open_clip
import pytest
import torch

from regionclip_cli.modeling import clip as models
from regionclip_cli.modeling.batchnorm_folding import fold_batchnorm
from regionclip_cli.data.images import pad_batch
from regionclip_cli.modeling.region_encoder import RegionEncoder, attention_pool

TINY = "test-region-tiny"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", autouse=True)
def tiny_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_configs")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / f"{TINY}.json").write_text(json.dumps(config))
    for name, shrunk in _shrunk_configs().items():
        (folder / f"{name}.json").write_text(json.dumps(shrunk))
    open_clip.add_model_config(folder)


def _shrunk_configs() -> dict[str, dict]:
    """Every region-capable open_clip config (RN50, RN101, RN50x4/x16/x64) at width 8: its depth,
    input size (so its attention-pool grid, 7 to 14) and head layout kept, and a one-layer text
    tower, so each runs through the region encoder in a second. Tiny ones (world-tiny) run as they are."""
    shrunk = {}
    for name in models.region_capable_models():
        config = open_clip.get_model_config(name)
        if name.endswith("-quickgelu") or config["vision_cfg"]["width"] <= 16:  # same tower / already tiny
            continue
        vision = {**config["vision_cfg"], "width": 8}
        shrunk[f"shrunk-{name}"] = {
            "embed_dim": 32, "vision_cfg": vision,
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    return shrunk


def _tiny_models() -> list[str]:
    tiny = [n for n in models.region_capable_models() if open_clip.get_model_config(n)["vision_cfg"]["width"] <= 16]
    return [TINY, *tiny, *_shrunk_configs()]


def _visual(name: str, seed: int = 0) -> torch.nn.Module:
    """An image tower whose batch norms do something (open_clip zero-inits every bn3 weight)."""
    torch.manual_seed(seed)
    return _active_norms(open_clip.create_model(name).visual)


def _active_norms(visual: torch.nn.Module) -> torch.nn.Module:
    for module in visual.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return visual.eval()


def _image(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", _tiny_models())
def test_whole_image_box_equals_encode_image(name, device):
    visual = _visual(name).to(device)
    size = visual.image_size
    images = torch.stack([_image(size, size, 1), _image(size, size, 2)]).to(device)
    boxes = [torch.tensor([[0.0, 0.0, size, size]], device=device)] * 2
    with torch.no_grad():
        expected = visual(images)
        got = RegionEncoder(visual)(images, boxes)
    assert got.device == images.device and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_rn50_whole_image_box_equals_encode_image():
    torch.manual_seed(0)
    clip = models.load_clip("RN50", random_init=True)  # one RN50 built: the text tower is most of its cost
    _active_norms(clip.model.visual)
    image = _image(224, 224, 3)[None]
    with torch.no_grad():
        expected = clip.model.encode_image(image)
        got = RegionEncoder(clip.model.visual)(image, [torch.tensor([[0.0, 0.0, 224.0, 224.0]])])
    assert RegionEncoder(clip.model.visual).roi_size == 14 and got.shape == (1, 1024)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_padded_batch_matches_each_image_alone():
    encoder = RegionEncoder(_visual(TINY))
    big, small = _image(256, 224, 4), _image(192, 160, 5)
    big_boxes = torch.tensor([[0.0, 0.0, 256.0, 224.0], [100.0, 30.0, 224.0, 250.0], [5.0, 5.0, 30.0, 21.0]])
    # away from the small image's padded border (the trunk's receptive field is < 100 px here)
    small_boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [16.0, 32.0, 96.0, 80.0]])
    with torch.no_grad():
        together = encoder(pad_batch([big, small]), [big_boxes, small_boxes])
        big_alone = encoder(big[None], [big_boxes])
        small_alone = encoder(small[None], [small_boxes])
    torch.testing.assert_close(together[:3], big_alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[3:], small_alone, atol=1e-5, rtol=1e-5)


def test_boxes_are_order_equivariant_and_chunking_changes_nothing():
    visual = _visual(TINY)
    image = _image(128, 160, 6)[None]
    generator = torch.Generator().manual_seed(7)
    corners = torch.rand(9, 2, generator=generator) * torch.tensor([100.0, 80.0])
    sizes = 8 + torch.rand(9, 2, generator=generator) * 60
    boxes = torch.cat([corners, corners + sizes], dim=1)
    order = torch.randperm(9, generator=generator)
    with torch.no_grad():
        reference = RegionEncoder(visual)(image, [boxes])
        permuted = RegionEncoder(visual)(image, [boxes[order]])
        chunked = RegionEncoder(visual, box_chunk=2)(image, [boxes])
    torch.testing.assert_close(permuted, reference[order], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(reference[0], reference[1])  # different boxes, different embeddings


def test_images_without_boxes():
    encoder = RegionEncoder(_visual(TINY))
    images = torch.stack([_image(64, 64, 8), _image(64, 64, 9)])
    box = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    with torch.no_grad():
        one = encoder(images, [torch.zeros(0, 4), box])
        none = encoder(images, [torch.zeros(0, 4), torch.zeros(0, 4)])
        alone = encoder(images[1:], [box])
    torch.testing.assert_close(one, alone, atol=1e-5, rtol=1e-5)
    assert none.shape == (0, 32) and none.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_dtype_and_device_follow_the_module(device):
    visual = _visual(TINY).to(device=device, dtype=torch.float64)
    image = _image(64, 64, 10)[None].to(device=device, dtype=torch.float64)
    box = [torch.tensor([[0.0, 0.0, 64.0, 64.0]])]  # float32 on the CPU: the encoder converts it
    with torch.no_grad():
        got = RegionEncoder(visual)(image, box)
        expected = visual(image)
    assert got.dtype == torch.float64 and got.device == image.device
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", _tiny_models())
def test_gradients_reach_the_trunk_when_training(name):
    visual = _visual(name).train()
    for part in (visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3, visual.layer1):
        part.requires_grad_(False)  # the student freezes the stem and layer1 (FREEZE_AT 2)
    encoder = RegionEncoder(visual)
    image = _image(96, 128, 11)[None]
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 48.0], [30.0, 20.0, 120.0, 90.0], [10.0, 10.0, 40.0, 40.0]])]
    encoder(image, boxes).square().sum().backward()
    for part in (visual.layer2, visual.layer3, visual.layer4, visual.attnpool):
        # the key bias cancels in the softmax, so it (alone) gets no gradient, as in the original
        grads = [p.grad for name, p in part.named_parameters() if name != "k_proj.bias"]
        assert all(g is not None for g in grads)
        assert all(g.abs().sum() > 0 for g in grads if g.numel() > 1)
    assert visual.conv1.weight.grad is None


def test_rejects_towers_that_are_not_modified_resnets():
    with pytest.raises(TypeError, match="ModifiedResNet"):
        RegionEncoder(torch.nn.Conv2d(3, 8, 3))


@pytest.mark.parametrize("name", _tiny_models())
def test_single_query_attention_pool_equals_open_clip_module(name):
    pool = _visual(name).attnpool
    grid = pool.positional_embedding.shape[0] - 1
    side = int(grid ** 0.5)
    features = torch.randn(6, pool.k_proj.in_features, side, side, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        torch.testing.assert_close(attention_pool(pool, features), pool(features), atol=1e-5, rtol=1e-5)


def test_folded_batchnorm_gives_the_same_regions_and_layer1_can_come_from_outside():
    visual = _visual(TINY, seed=3)
    images = torch.stack([_image(96, 128, 11), _image(96, 128, 12)])
    boxes = [torch.tensor([[4.0, 6.0, 70.0, 90.0], [0.0, 0.0, 128.0, 96.0]]), torch.tensor([[30.0, 10.0, 60.0, 40.0]])]
    with torch.no_grad():
        reference = RegionEncoder(visual)(images, boxes)
        folded_visual = copy.deepcopy(visual)
        # stem 3 pairs; bottlenecks (1 + 2 + 1 + 1) x 3 pairs; every first bottleneck's downsample 1 pair
        assert fold_batchnorm(folded_visual) == 3 + 5 * 3 + 4
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded_visual.modules())
        folded = RegionEncoder(folded_visual)
        got = folded(images, boxes)
        from_outside = RegionEncoder(visual)(images, boxes, layer1_features=folded.layer1(images))
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(from_outside, reference, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got[0], got[1])


def test_folding_refuses_a_tower_in_training_mode():
    visual = _visual(TINY).train()
    with pytest.raises(ValueError, match="frozen tower"):
        fold_batchnorm(visual)


def test_roi_align_runs_in_float32_under_bf16_autocast():
    """Boxes used to be cast to the features' dtype: under bf16, x = 1050.9 px became 1048."""
    from regionclip_cli.modeling import region_encoder as module

    encoder = RegionEncoder(_visual(TINY))
    seen = []

    def spy(features, boxes, **kwargs):
        seen.append((features.dtype, boxes if isinstance(boxes, torch.Tensor) else torch.cat(boxes)))
        return roi_align(features, boxes, **kwargs)

    from torchvision.ops import roi_align

    image = _image(64, 1088, 0)[None]
    box = torch.tensor([[1000.3, 10.7, 1050.9, 60.1]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), \
            mock.patch.object(module, "roi_align", spy):
        features = encoder.trunk(image)
        assert features.dtype == torch.bfloat16
        encoder.pool(features, [box])
    dtype, boxes = seen[0]
    assert dtype == torch.float32 and boxes.dtype == torch.float32
    assert boxes[0, -4:].tolist() == pytest.approx(box[0].tolist(), abs=1e-4)


def test_large_batches_are_chunked_without_changing_values():
    """Bounded tensors per call (a 150-image batch crashed torchvision past 2**31 elements)."""
    from regionclip_cli.modeling import region_encoder as module

    visual = _visual(TINY)
    images = torch.stack([_image(64, 96, seed) for seed in range(5)])
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 30.0], [10.0, 5.0, 90.0, 60.0]]) for _ in range(5)]
    with torch.no_grad():
        whole = RegionEncoder(visual, box_chunk=1000)(images, boxes)
        encoder = RegionEncoder(visual, box_chunk=3)
        per_image = encoder._stem_width * 32 * 48
        with mock.patch.object(module, "MAX_TRUNK_ELEMENTS", 2 * per_image):
            assert encoder.images_per_call(64, 96) == 2
            chunked = encoder(images, boxes)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_frozen_factory_leaves_the_callers_tower_untouched():
    from regionclip_cli.modeling.region_encoder import frozen_region_encoder

    visual = _visual(TINY).train()
    before = {k: v.clone() for k, v in visual.state_dict().items()}
    encoder = frozen_region_encoder(visual)
    assert visual.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in visual.modules())
    assert all(torch.equal(before[k], v) for k, v in visual.state_dict().items())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    images, boxes = _image(64, 80, 1)[None], [torch.tensor([[3.0, 4.0, 60.0, 50.0]])]
    with torch.no_grad():
        torch.testing.assert_close(encoder(images, boxes), RegionEncoder(visual.eval())(images, boxes),
                                   atol=1e-4, rtol=1e-4)
