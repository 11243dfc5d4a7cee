"""The trainable class-agnostic RPN (modeling/rpn.py) on a tiny random CLIP trunk."""

import pytest
import torch

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.modeling.checkpoints import Checkpoint, save_checkpoint
from regionclip_cli.modeling.clip import load_clip
from regionclip_cli.modeling.rpn import (RPNConfig, build_proposal_network, load_proposal_network,
                                         proposal_recall, rpn_checkpoint)

SMALL = RPNConfig(anchor_sizes=[16, 32, 64], batch_size_per_image=64, pre_nms_top_n_test=500,
                  post_nms_top_n_test=100)


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return load_clip("world-tiny", random_init=True)


def _network(clip, config=SMALL):
    return build_proposal_network(config, clip_visual=clip.model.visual, mean=clip.mean, std=clip.std)


def _images():
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, 128, 128, generator=generator), torch.rand(3, 96, 112, generator=generator)]


TARGETS = [torch.tensor([[10.0, 12.0, 50.0, 60.0], [70.0, 64.0, 120.0, 110.0]]), torch.zeros((0, 4))]


def test_training_returns_losses_and_a_tiny_overfit_lowers_them(tiny_clip):
    torch.manual_seed(0)
    network = _network(tiny_clip).train()
    assert not network.backbone.training  # the frozen trunk's batch norm never moves
    trainable = [p for p in network.parameters() if p.requires_grad]
    assert trainable and all(name.startswith("rpn.head") for name, p in network.named_parameters()
                             if p.requires_grad)
    optimizer = torch.optim.SGD(trainable, lr=0.2, momentum=0.9)
    first = last = None
    for _ in range(15):
        torch.manual_seed(0)  # the same anchor sample every step: a pure overfit
        losses = network(_images(), TARGETS)  # the second image has no boxes: zeros((0, 4))
        assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        first = total.item() if first is None else first
        last = total.item()
    assert last < 0.7 * first


def test_training_mode_without_targets_is_an_error(tiny_clip):
    with pytest.raises(ValueError, match="needs targets"):
        _network(tiny_clip).train()(_images())


def test_eval_keeps_sigmoid_scores_sorted_and_limited(tiny_clip):
    network = _network(tiny_clip).eval()
    with torch.no_grad():
        outputs = network(_images())
    for output, image in zip(outputs, _images()):
        boxes, scores = output["boxes"], output["scores"]
        assert len(boxes) == len(scores) <= SMALL.post_nms_top_n_test
        assert ((scores >= 0) & (scores <= 1)).all()
        assert (scores[:-1] >= scores[1:]).all()
        height, width = image.shape[-2:]
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all() and (boxes >= 0).all()
    network.set_test_limits(0.9, 20)
    with torch.no_grad():
        assert all(len(o["boxes"]) <= 20 for o in network(_images()))


def test_proposals_are_float32_under_bf16_autocast(tiny_clip):
    network = _network(tiny_clip).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = network(_images())
    assert all(o["boxes"].dtype == torch.float32 and o["scores"].dtype == torch.float32 for o in outputs)


def test_anchors_are_not_rounded_as_detectron2(tiny_clip):
    network = _network(tiny_clip, RPNConfig(anchor_sizes=[32], aspect_ratios=[0.5]))
    cell = network.rpn.anchor_generator.cell_anchors[0]
    # 32 px at ratio 0.5: w = 32 / sqrt(0.5) = 45.25..., not rounded to 45
    assert cell[0, 2] - cell[0, 0] == pytest.approx(32 / 0.5 ** 0.5, abs=1e-4)


def test_checkpoint_round_trip_and_bad_files(tiny_clip, tmp_path):
    network = _network(tiny_clip).eval()
    path = tmp_path / "rpn.pt"
    save_checkpoint(path, rpn_checkpoint(network, "world-tiny", {"trained_on": "test"}))
    loaded = load_proposal_network(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        for a, b in zip(network(_images()), loaded(_images())):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])

    clip_file = tmp_path / "clip.pt"
    save_checkpoint(clip_file, Checkpoint("clip", "world-tiny", {"x": torch.zeros(1)}))
    with pytest.raises(RegionclipError, match="not an RPN"):
        load_proposal_network(clip_file)

    other = tmp_path / "other-backbone.pt"  # an RPN file that names a backbone its weights do not fit
    save_checkpoint(other, rpn_checkpoint(network, "RN50", {}))
    with pytest.raises(RegionclipError, match="do not fit an RPN on the RN50 backbone"):
        load_proposal_network(other)


def test_recall_counts_boxes_found_at_each_iou():
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])]
    exact_first = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [20.0, 20.0, 30.0, 30.0]])]
    recall = proposal_recall(exact_first, gt, limits=(1, 2, 3))
    assert recall[1] == pytest.approx(50.0) and recall[2] == pytest.approx(50.0)
    assert recall[3] == pytest.approx(100.0)
    # a box that overlaps by IoU 0.9 counts at thresholds 0.5 ... 0.9 (9 of 10)
    recall = proposal_recall([torch.tensor([[0.0, 0.0, 10.0, 9.0]])], [gt[0][:1]], limits=(1,))
    assert recall[1] == pytest.approx(90.0)


def test_zeroshot_with_rpn_proposals(cli, small_world, tiny_clip, tmp_path):
    import json

    network = _network(tiny_clip).eval()
    path = tmp_path / "rpn.pt"
    save_checkpoint(path, rpn_checkpoint(network, "world-tiny", {}))
    out = tmp_path / "zs"
    images = sorted((small_world / "images").iterdir())[:2]  # 1,000 proposals each: keep it short
    code, _, err = cli("zeroshot", *images, "--model", "world-tiny", "--vocab", "world",
                       "--templates", "single", "--proposals", "rpn", "--rpn", path, "--out", out, "-q",
                       "--gt", small_world / "annotations.json", "--device", "cpu")
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    scores = [d["score"] for row in rows for d in row["detections"]]
    assert len(rows) == 2 and scores and all(0 < s <= 1 for s in scores)  # sqrt(p x sigmoid): never NaN or > 1

    code, _, err = cli("zeroshot", small_world / "images", "--model", "world-tiny", "--proposals", "rpn",
                       "--out", tmp_path / "x")
    assert code == 2 and "--proposals rpn needs --rpn FILE" in err
    clip_file = tmp_path / "clip.pt"
    save_checkpoint(clip_file, Checkpoint("clip", "world-tiny", {"x": torch.zeros(1)}))
    code, _, err = cli("zeroshot", small_world / "images", "--model", "world-tiny", "--proposals", "rpn",
                       "--rpn", clip_file, "--out", tmp_path / "y")
    assert code == 2 and "not an RPN" in err and "Traceback" not in err


def test_resnet_fpn_backbone_trains_with_the_head_and_round_trips(tmp_path):
    torch.manual_seed(0)
    config = RPNConfig(backbone="resnet18-fpn", anchor_sizes=[16, 32, 64, 128, 256], batch_size_per_image=64,
                       post_nms_top_n_test=50)
    network = build_proposal_network(config).train()
    losses = network(_images(), TARGETS)
    sum(losses.values()).backward()
    assert network.backbone.body.layer1[0].conv1.weight.grad is not None  # the FPN trains too
    path = tmp_path / "fpn.pt"
    save_checkpoint(path, rpn_checkpoint(network.eval(), "resnet18-fpn", {}))
    with torch.no_grad():
        expected = network(_images())
        found = load_proposal_network(path)(_images())
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(expected, found))
