"""The open-vocabulary detector's parts (modeling/detector/): predictor, sampling, losses,
post-processing, and the whole module on a tiny random CLIP."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from regionclip_cli.core.errors import RegionclipError
from regionclip_cli.modeling.clip import load_clip
from regionclip_cli.modeling.detector.heads import (OpenVocabularyPredictor, box_regression_loss,
                                                    classification_loss, sample_regions)
from regionclip_cli.modeling.detector.model import DetectorConfig, OpenVocabularyDetector
from regionclip_cli.modeling.detector.postprocess import (PostprocessConfig, combine_scores,
                                                          gaussian_soft_nms, select_detections)
from regionclip_cli.modeling.rpn import RPNConfig, build_proposal_network
from regionclip_cli.modeling.freezing import freeze_batchnorm, freeze_stages


def test_predictor_is_cosine_over_temperature_with_a_zero_background_and_swaps_vocabulary():
    torch.manual_seed(0)
    classes = torch.randn(3, 8)
    predictor = OpenVocabularyPredictor(classes, 8, temperature=0.01)
    features = torch.randn(5, 8)
    logits, deltas = predictor(features)
    expected = F.normalize(features, dim=-1) @ F.normalize(classes, dim=-1).t() / 0.01
    assert torch.allclose(logits[:, :3], expected, atol=1e-4)
    assert torch.equal(logits[:, 3], torch.zeros(5))
    assert deltas.shape == (5, 4) and predictor.bbox_pred.weight.std() < 0.01
    assert all(b.dtype == torch.float32 for b in predictor.buffers())
    assert "class_embeddings" not in predictor.state_dict()  # never trained, never saved as weights

    predictor.set_vocabulary(torch.randn(7, 8))
    logits, _ = predictor(features)
    assert logits.shape == (5, 8) and predictor.num_classes == 7
    with pytest.raises(RegionclipError, match="512-d but the detector's regions are 8-d"):
        predictor.set_vocabulary(torch.randn(4, 512))


def test_background_logit_moves_the_background_line_to_a_cosine():
    """detector.background_logit b: a region is background once every cosine is below b × τ."""
    classes = torch.eye(3, 8)
    predictor = OpenVocabularyPredictor(classes, 8, temperature=0.01, background_logit=15.0)
    features = torch.zeros(2, 8)
    features[0, 0], features[0, 5] = 0.1, 1.0  # cosine 0.0995 with class 0: below 0.15
    features[1, 0], features[1, 5] = 0.3, 1.0  # cosine 0.287
    logits, _ = predictor(features)
    assert torch.equal(logits[:, 3], torch.full((2,), 15.0))
    assert logits.argmax(1).tolist() == [3, 0]
    original = OpenVocabularyPredictor(classes, 8)(features)[0]
    assert original.argmax(1).tolist() == [0, 0]  # with the original's 0 both are class 0


def test_predictor_stays_float32_under_autocast():
    torch.manual_seed(0)
    predictor = OpenVocabularyPredictor(torch.randn(3, 8), 8)
    features = torch.randn(5, 8)
    expected = predictor(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = predictor(features.bfloat16())
    assert all(f.dtype == torch.float32 for f in found)
    assert torch.allclose(found[0], expected[0], atol=2.0)  # only the bf16 input's rounding remains


def test_focal_scaled_loss_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.5, 0.0], [0.1, 1.0, 0.0], [1.5, -1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 2, 1])  # index 2 = background
    loss = classification_loss(logits, labels, focal_gamma=0.5, background_weight=0.2)
    rows = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        p = [math.exp(v) / sum(math.exp(u) for u in row) for v in row]
        weight = 0.2 if label == 2 else 1.0
        rows.append(weight * -math.log(p[label]) * (1 - p[label]) ** 0.5)
    assert loss.item() == pytest.approx(sum(rows) / 3, rel=1e-5)
    loss.backward()  # p_t is not detached: the scaling factor has a gradient too
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_weighted_cross_entropy_is_normalised_by_the_summed_weights():
    logits = torch.tensor([[2.0, 0.5, 0.0], [0.1, 1.0, 0.0], [1.5, -1.0, 0.0]])
    labels = torch.tensor([0, 2, 2])
    ce = F.cross_entropy(logits, labels, reduction="none")
    weights = torch.tensor([1.0, 0.8, 0.8])
    expected = (ce * weights).sum() / weights.sum()
    got = classification_loss(logits, labels, focal_gamma=0.0, background_weight=0.8)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_box_loss_is_l1_over_foreground_divided_by_all_sampled():
    deltas = torch.tensor([[1.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0], [0.0, 2.0, 0.0, 0.0]])
    targets = torch.zeros(3, 4)
    foreground = torch.tensor([True, False, True])
    assert box_regression_loss(deltas, targets, foreground).item() == pytest.approx(3.0 / 3)


def test_sampling_appends_ground_truth_caps_positives_and_is_reproducible():
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0], [40.0, 40.0, 80.0, 80.0]])
    proposals = torch.cat([gt + torch.randn(2, 4) * 0.5 for _ in range(20)] + [torch.tensor([[100.0, 100.0, 120.0, 120.0]]).repeat(30, 1)])
    labels = torch.tensor([3, 5])
    sample = lambda seed: sample_regions(proposals, gt, labels, 7, regions=16, positive_fraction=0.25,
                                         iou_threshold=0.5, generator=torch.Generator().manual_seed(seed))
    boxes, got_labels, matched = sample(0)
    assert len(boxes) == 16 and (got_labels != 7).sum() == 4  # 16 x 25 %
    positives = got_labels != 7
    assert (box_iou(boxes[positives], gt).max(dim=1).values >= 0.5).all()
    assert torch.equal(sample(0)[0], boxes) and not torch.equal(sample(1)[0], boxes)
    # only the ground truth itself (appended) can be positive when the proposals miss everything
    boxes, got_labels, _ = sample_regions(proposals[-30:], gt, labels, 7, regions=16, positive_fraction=0.25,
                                          iou_threshold=0.5)
    assert sorted(got_labels[got_labels != 7].tolist()) == [3, 5]
    # an image without boxes: all background
    _, got_labels, _ = sample_regions(proposals, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long), 7,
                                      regions=16, positive_fraction=0.25, iou_threshold=0.5)
    assert (got_labels == 7).all()


def _reference_soft_nms(boxes, scores, classes, sigma, prune):
    """The textbook loop over plain lists (no offsets, no early stop)."""
    items = [(i, s) for i, s in enumerate(scores.tolist())]
    kept = []
    while items:
        best = max(range(len(items)), key=lambda k: items[k][1])
        index, score = items.pop(best)
        kept.append((index, score))
        survivors = []
        for other, other_score in items:
            if classes[other] == classes[index]:
                iou = box_iou(boxes[index][None], boxes[other][None]).item()
                other_score *= math.exp(-iou * iou / sigma)
            if other_score > prune:
                survivors.append((other, other_score))
        items = survivors
    return kept


def test_gaussian_soft_nms_matches_a_reference_and_stops_at_the_limit():
    torch.manual_seed(0)
    centres = torch.rand(40, 2) * 60
    sizes = torch.rand(40, 2) * 30 + 5
    boxes = torch.cat([centres, centres + sizes], dim=1)
    scores = torch.rand(40)
    classes = torch.randint(0, 3, (40,))
    keep, decayed = gaussian_soft_nms(boxes, scores, classes, sigma=0.5, prune=0.001)
    reference = _reference_soft_nms(boxes, scores, classes, 0.5, 0.001)
    assert keep.tolist() == [i for i, _ in reference]
    assert torch.allclose(decayed, torch.tensor([s for _, s in reference]), atol=1e-6)
    assert (decayed[:-1] >= decayed[1:]).all()
    top, top_scores = gaussian_soft_nms(boxes, scores, classes, sigma=0.5, prune=0.001, limit=10)
    assert torch.equal(top, keep[:10]) and torch.allclose(top_scores, decayed[:10])


def test_select_detections_nms_and_soft_nms():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.3], [0.0005, 0.6]])
    kept_boxes, kept_scores, classes = select_detections(boxes, scores, PostprocessConfig())
    assert classes.tolist() == [0, 1, 1] and kept_scores.tolist() == pytest.approx([0.9, 0.6, 0.3])
    _, soft_scores, soft_classes = select_detections(boxes, scores, PostprocessConfig(soft_nms=True))
    assert len(soft_scores) == 4  # the overlapping class-0 box is decayed, not removed
    assert soft_scores[-1] < 0.8


def test_objectness_is_combined_as_a_sigmoid_probability():
    probabilities = torch.tensor([[0.64, 0.16]])
    assert combine_scores(probabilities, torch.tensor([0.25])).tolist() == [pytest.approx([0.4, 0.2])]


@pytest.fixture(scope="module")
def tiny_detector():
    torch.manual_seed(0)
    clip = load_clip("world-tiny", random_init=True)
    rpn = build_proposal_network(RPNConfig(anchor_sizes=[16, 32, 64], pre_nms_top_n_test=400),
                                 clip_visual=clip.model.visual, mean=clip.mean, std=clip.std)
    visual = freeze_batchnorm(copy.deepcopy(clip.model.visual).requires_grad_(True))
    freeze_stages(visual, 2)
    config = DetectorConfig(proposals=50, regions_per_image=32)
    return OpenVocabularyDetector(rpn, visual, torch.randn(4, clip.embed_dim), config,
                                  mean=clip.mean, std=clip.std)


def test_detector_trains_with_a_frozen_eval_rpn_and_detects_with_any_vocabulary(tiny_detector):
    detector = tiny_detector.train()
    assert detector.encoder.training and not detector.proposal_network.training
    assert not detector.proposal_network.backbone.training
    assert not any(p.requires_grad for p in detector.proposal_network.parameters())
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 112)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}]
    # in training the RPN gives its test-time proposals (top 50 after NMS 0.7), as the original
    proposals = detector.propose(images)
    assert all(len(p["boxes"]) <= 50 for p in proposals)
    losses = detector(images, targets, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    sum(losses.values()).backward()
    assert detector.predictor.bbox_pred.weight.grad is not None
    assert detector.encoder.visual.layer4[0].conv1.weight.grad is not None
    assert detector.encoder.visual.layer1[0].conv1.weight.grad is None  # stem + layer1 frozen

    detector.eval()
    detector.set_vocabulary(torch.randn(6, detector.predictor.input_dim))
    with torch.no_grad():
        outputs = detector(images)
    for output, image in zip(outputs, images):
        assert set(output) == {"boxes", "labels", "scores"}
        assert len(output["boxes"]) <= 100 and (output["labels"] < 6).all()
        assert (output["boxes"][:, 2] <= image.shape[-1]).all()


def test_normalized_box_input_makes_box_deltas_independent_of_the_feature_scale():
    """`detector.box_regression_input: normalized`: the regression sees unit features x sqrt(D),
    so a tower whose outputs are 1,000x longer predicts the same deltas (raw: 1,000x larger)."""
    torch.manual_seed(0)
    features = torch.randn(5, 16)
    names = torch.randn(3, 16)
    normalized = OpenVocabularyPredictor(names, 16, normalize_box_input=True)
    raw = OpenVocabularyPredictor(names, 16)
    raw.load_state_dict(normalized.state_dict())
    logits, deltas = normalized(features)
    logits_big, deltas_big = normalized(features * 1000)
    torch.testing.assert_close(deltas, deltas_big)
    torch.testing.assert_close(logits, logits_big)
    unit = torch.nn.functional.normalize(features, dim=-1) * 4.0
    torch.testing.assert_close(deltas, raw(unit)[1])
    torch.testing.assert_close(raw(features * 1000)[1], raw(features)[1] * 1000, rtol=1e-4, atol=1e-5)
