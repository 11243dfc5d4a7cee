import math

import torch
import torch.nn.functional as F

from regionclip_cli.modeling.losses import concept_distillation, image_text_contrastive, region_concept_contrastive


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def test_region_concept_contrastive_matches_hand_computation():
    concepts = unit([1, 0], [0, 1], [1, 1])
    regions = unit([1, 0.2], [0.1, 1], [0.9, 0.1])
    labels = torch.tensor([0, 1, 0])
    tau = 0.5
    loss = region_concept_contrastive(regions, concepts, labels, tau)
    expected = 0.0
    for i in range(3):
        sims = [float(regions[i] @ concepts[labels[j]]) / tau for j in range(3)]
        pos = sum(math.exp(s) for j, s in enumerate(sims) if labels[j] == labels[i])
        expected += -math.log(pos / sum(math.exp(s) for s in sims))
    assert math.isclose(loss.item(), expected / 3, rel_tol=1e-9)


def test_region_concept_gradient_pulls_region_towards_its_concept():
    concepts = unit([1, 0], [0, 1])
    region = unit([0.6, 0.8]).requires_grad_(True)
    loss = region_concept_contrastive(region, concepts, torch.tensor([0]), 0.1)
    # A single region has only its own concept as candidate: nothing to contrast.
    assert loss.item() == 0.0
    regions = unit([0.6, 0.8], [0.0, 1.0]).requires_grad_(True)
    loss = region_concept_contrastive(regions, concepts, torch.tensor([0, 1]), 0.1)
    loss.backward()
    # Gradient descent moves region 0 along +x (towards concept 0) and away from concept 1.
    assert regions.grad[0, 0] < 0 and regions.grad[0, 1] > 0


def test_region_concept_masks_equal_leaving_the_regions_out():
    """`keep` masks give the loss and gradients of indexing the kept regions, and the left-out
    regions get an exact zero gradient, even one whose concept no kept region has."""
    torch.manual_seed(0)
    concepts = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=-1)
    regions = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=-1).requires_grad_(True)
    labels = torch.tensor([0, 1, 1, 2, 4, 0])
    keep = torch.tensor([True, True, False, True, False, True])  # label 4 only on a left-out region
    masked = region_concept_contrastive(regions, concepts, labels, 0.05, keep=keep)
    masked.backward()
    grad_masked = regions.grad.clone()
    regions.grad = None
    indexed = region_concept_contrastive(regions[keep], concepts, labels[keep], 0.05)
    indexed.backward()
    assert math.isclose(masked.item(), indexed.item(), rel_tol=1e-12)
    assert torch.allclose(grad_masked, regions.grad, atol=1e-12)
    assert torch.equal(grad_masked[~keep], torch.zeros(2, 4, dtype=torch.float64))
    none_kept = region_concept_contrastive(regions, concepts, labels, 0.05, keep=torch.zeros(6, dtype=torch.bool))
    assert none_kept.item() == 0.0


def test_distillation_is_kl_teacher_to_student_and_zero_when_equal():
    concepts = unit([1, 0], [0, 1], [1, 1])
    teacher = unit([1, 0.1])
    student = unit([0.2, 1]).requires_grad_(True)
    tau = 0.25
    loss = concept_distillation(student, teacher, concepts, tau)
    q = torch.softmax(teacher @ concepts.t() / tau, dim=1)
    p = torch.softmax(student @ concepts.t() / tau, dim=1)
    expected = (q * (q.log() - p.log())).sum()
    assert torch.isclose(loss, expected, rtol=1e-9)
    loss.backward()
    assert student.grad[0, 0] < 0  # descent moves the student towards the teacher's concept 0
    assert concept_distillation(teacher, teacher, concepts, tau).abs().item() < 1e-12


def test_image_text_contrastive_is_symmetric_infonce():
    images = unit([1, 0], [0, 1], [1, 1])
    texts = unit([0.9, 0.1], [0.2, 1], [1, 0.8])
    tau = 0.1
    loss = image_text_contrastive(images, texts, tau)
    logits = images @ texts.t() / tau
    i2t = -torch.log_softmax(logits, dim=1).diagonal().mean()
    t2i = -torch.log_softmax(logits.t(), dim=1).diagonal().mean()
    assert torch.isclose(loss, (i2t + t2i) / 2, rtol=1e-9)
    matched = image_text_contrastive(images, images, tau)
    shuffled = image_text_contrastive(images, images[[1, 2, 0]], tau)
    assert matched < shuffled


def test_losses_on_empty_batches_are_zero_and_differentiable():
    regions = torch.zeros(0, 4, requires_grad=True)
    concepts = unit([1, 0, 0, 0])
    loss = region_concept_contrastive(regions, concepts.float(), torch.zeros(0, dtype=torch.long))
    loss = loss + concept_distillation(regions, regions.detach(), concepts.float())
    loss.backward()
    assert loss.item() == 0.0


def test_distillation_towards_candidates_is_the_kl_to_the_renormalised_teacher():
    concepts = unit([1, 0], [0, 1], [1, 1])
    student = unit([1, 0.3], [0.2, 1])
    teacher = unit([0.1, 1], [1, 0.1])
    everything = torch.ones(2, 3, dtype=torch.bool)
    assert torch.allclose(concept_distillation(student, teacher, concepts, 0.5, teacher_candidates=everything),
                          concept_distillation(student, teacher, concepts, 0.5))
    named = torch.tensor([[True, False, True], [False, True, True]])
    loss = concept_distillation(student, teacher, concepts, 0.5, reduction="none", teacher_candidates=named)
    for i in range(2):
        log_p = F.log_softmax(student[i] @ concepts.t() / 0.5, dim=0)
        q = F.softmax((teacher[i] @ concepts.t() / 0.5)[named[i]], dim=0)
        assert math.isclose(loss[i].item(), float((q * (q.log() - log_p[named[i]])).sum()), rel_tol=1e-9)
