"""RegionCLIP's pretraining losses (paper, Sec. 3.2), each with its formula.

Notation: r_i are L2-normalised student region embeddings, t_i the teacher's, c_k the L2-normalised
concept embeddings of the pool, tau the temperature (0.01 in the paper), y_i the pseudo label of
region i (the teacher's best concept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAPER_TEMPERATURE = 0.01


def region_concept_contrastive(regions: torch.Tensor, concepts: torch.Tensor, labels: torch.Tensor,
                               temperature: float = PAPER_TEMPERATURE,
                               candidate_labels: torch.Tensor | None = None,
                               keep: torch.Tensor | None = None,
                               candidate_keep: torch.Tensor | None = None,
                               reduction: str = "mean") -> torch.Tensor:
    """Region-concept contrastive loss L_cntrst (multiple-instance cross-entropy).

    The candidate concepts are the pseudo labels of the batch's regions, one per region, so a
    concept appears once for each region it labels. For region i:

        L_i = -log( sum_{j : y_j = y_i} exp(r_i . c_{y_j} / tau) / sum_j exp(r_i . c_{y_j} / tau) )

    i.e. every copy of its own concept is a positive, the other concepts of the batch are the
    negatives. `regions` [N, D], `concepts` [K, D] (the pool), `labels` [N] indices into the pool.
    `candidate_labels` (default: `labels`) widens the candidates to the labels of the whole global
    batch in distributed training, so every process contrasts against the same concepts a single
    process would.

    `keep` [N] and `candidate_keep` [M] (default: all; `candidate_keep` defaults to `keep` when
    the candidates are the regions' own labels) leave out the regions whose pseudo label is not
    confident: such a region adds nothing and its label is no candidate. `candidate_keep` may
    also be [N, M], one candidate set per region (e.g. only the candidates of its loss group).
    Masks rather than indexing keep every shape fixed, so a GPU step never waits to learn how
    many regions passed. Returns the mean over the kept regions (0 when there are none, still
    differentiable), or with `reduction="none"` each region's L_i (0 for left-out regions).
    """
    if labels.numel() == 0:
        return regions.sum(dim=1) * 0.0 if reduction == "none" else regions.sum() * 0.0
    if candidate_labels is None:
        candidate_labels, candidate_keep = labels, keep
    if keep is None:
        keep = torch.ones_like(labels, dtype=torch.bool)
    if candidate_keep is None:
        candidate_keep = torch.ones_like(candidate_labels, dtype=torch.bool)
    logits = regions @ concepts[candidate_labels].t() / temperature  # [N, M]
    # A finite fill: a left-out region may have no positive at all, and -inf would turn its
    # (discarded) row into NaN gradients.
    hidden = torch.finfo(logits.dtype).min
    candidates = candidate_keep if candidate_keep.dim() == 2 else candidate_keep[None, :]
    logits = logits.masked_fill(~candidates, hidden)
    positive = (labels[:, None] == candidate_labels[None, :]) & candidates
    log_all = torch.logsumexp(logits, dim=1)
    log_pos = torch.logsumexp(logits.masked_fill(~positive, hidden), dim=1)
    per_region = torch.where(keep, log_all - log_pos, 0.0)
    if reduction == "none":
        return per_region
    return per_region.sum() / keep.sum().clamp(min=1)


def concept_distillation(student_regions: torch.Tensor, teacher_regions: torch.Tensor,
                         concepts: torch.Tensor, temperature: float = PAPER_TEMPERATURE,
                         reduction: str = "batchmean", teacher_candidates: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Concept distillation L_dist = mean_i KL(q_i || p_i) over the whole concept pool.

        q_i = softmax_k(t_i . c_k / tau)  (teacher),   p_i = softmax_k(r_i . c_k / tau)  (student)
        KL(q || p) = sum_k q_k (log q_k - log p_k)

    `teacher_candidates` [N, K] (bool) restricts q_i to the concepts the region may be labelled
    with (q_k = 0 elsewhere), as caption-restricted pseudo labels are; p_i stays over the pool. A
    row with no candidate falls back to the whole pool. Computed in at least float32.
    `reduction="none"` gives each region's KL(q_i || p_i) [N].
    """
    if student_regions.shape[0] == 0:
        return student_regions.sum(dim=1) * 0.0 if reduction == "none" else student_regions.sum() * 0.0
    at_least_fp32 = torch.promote_types(student_regions.dtype, torch.float32)
    concepts = concepts.to(at_least_fp32)
    log_p = F.log_softmax(student_regions.to(at_least_fp32) @ concepts.t() / temperature, dim=1)
    teacher_logits = teacher_regions.to(at_least_fp32) @ concepts.t() / temperature
    if teacher_candidates is not None:
        teacher_candidates = teacher_candidates | ~teacher_candidates.any(dim=1, keepdim=True)
        teacher_logits = teacher_logits.masked_fill(~teacher_candidates, float("-inf"))
    log_q = F.log_softmax(teacher_logits, dim=1)
    if teacher_candidates is None:
        per_region = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(dim=1)
    else:  # 0 log 0 = 0 for the excluded concepts (kl_div would give 0 x -inf = nan)
        per_region = (log_q.exp() * (log_q.masked_fill(~teacher_candidates, 0.0) - log_p)).sum(dim=1)
    return per_region if reduction == "none" else per_region.sum() / student_regions.shape[0]


def group_mean(values: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor,
               group_counts: torch.Tensor) -> torch.Tensor:
    """The mean over groups of each group's mean of `values` over its `mask`ed items.

        L = 1/|G+| sum_{g in G+} 1/n_g sum_{i in g, mask_i} v_i,   G+ = groups with n_g > 0

    `groups` [N] is each item's group, `group_counts` [num_groups] the masked items per group
    (over every process, when the items are spread over several); with items of one process only,
    this is that process's share of L, and the shares sum to L.
    """
    scale = group_counts.to(values.dtype)[groups].clamp(min=1)
    share = torch.where(mask, values / scale, 0.0).sum()
    return share / (group_counts > 0).sum().clamp(min=1).to(values.dtype)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.size = dist.get_rank(), features.shape[0]
        parts = [torch.empty_like(features) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, features.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size: (ctx.rank + 1) * ctx.size]


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """All ranks' features concatenated (rank order), gradients flowing back to each rank's own.

    Every rank must pass the same number of rows (the global batch is split evenly).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    return _GatherWithGrad.apply(features)


def image_text_contrastive(images: torch.Tensor, texts: torch.Tensor,
                           temperature: float = PAPER_TEMPERATURE) -> torch.Tensor:
    """CLIP's symmetric InfoNCE between whole-image region embeddings and their captions.

    With B_g = the global batch (features gathered from all ranks, so negatives span it):
        L = 1/2 [ CE(I T^T / tau, diag) + CE(T I^T / tau, diag) ]
    `images` and `texts` are this rank's [B, D] normalised features, row i matching row i.
    """
    import torch.distributed as dist

    all_images = gather_with_grad(images)
    all_texts = gather_with_grad(texts)
    offset = dist.get_rank() * images.shape[0] if dist.is_available() and dist.is_initialized() else 0
    targets = torch.arange(images.shape[0], device=images.device) + offset
    # Each rank computes the rows of its own samples against the global batch; averaged over
    # ranks by DDP, this equals the loss over the whole global batch.
    image_to_text = images @ all_texts.t() / temperature
    text_to_image = texts @ all_images.t() / temperature
    return (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2
