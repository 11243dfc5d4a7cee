import math

import torch

from regionclip_cli.modeling.scoring import DetectionConfig, class_probabilities, select_detections


def test_class_probabilities_match_a_hand_computation_with_zero_background():
    regions = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    classes = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # normalised inside
    probs = class_probabilities(regions, classes, temperature=0.5)
    cos = torch.tensor([[1.0, 0.0], [0.6, 0.8]]) / 0.5
    expected = torch.cat([cos.exp(), torch.ones(2, 1)], dim=1)
    expected = (expected / expected.sum(1, keepdim=True))[:, :2]
    assert torch.allclose(probs, expected, atol=1e-6)
    assert (probs.sum(1) < 1).all()  # background keeps some mass
    assert math.isclose(probs[0, 0].item(), math.exp(2) / (math.exp(2) + 1 + 1), rel_tol=1e-5)


def test_select_detections_thresholds_nms_per_class_and_caps():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60.]])
    probs = torch.tensor([[0.9, 0.05], [0.8, 0.7], [0.0005, 0.3]])
    det = select_detections(boxes, probs, DetectionConfig(score_threshold=0.001, nms_threshold=0.5,
                                                        max_detections=10))
    got = sorted(zip(det.classes.tolist(), [round(s, 4) for s in det.scores.tolist()]))
    # class 0: box 1 suppressed by box 0 (IoU 0.81); box 2 below threshold. class 1: all three kept?
    # box 0 (0.05) is suppressed by box 1 (0.7) in class 1; box 2 kept.
    assert got == [(0, 0.9), (1, 0.3), (1, 0.7)]
    capped = select_detections(boxes, probs, DetectionConfig(max_detections=2))
    assert capped.scores.tolist() == [0.8999999761581421, 0.699999988079071]


def test_select_detections_handles_no_candidates():
    det = select_detections(torch.zeros(0, 4), torch.zeros(0, 3), DetectionConfig())
    assert det.boxes.shape == (0, 4) and det.scores.numel() == 0
