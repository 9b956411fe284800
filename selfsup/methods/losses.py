"""Pretext-task losses as plain functions: shapes in the docstring, the formula in one line."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, decoupled: bool = False,
            normalize: bool = True) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1). z1, z2: (N, D), row i of each is a positive pair.

    l(i, j) = -log exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t) over the 2N
    embeddings, averaged over all 2N anchors: each anchor has 1 positive and 2N-2 negatives.
    decoupled: DCL (Yeh et al. 2022, eq. 6), the positive leaves the denominator:
    l(i, j) = -sim(z_i, z_j)/t + log sum_{k != i, j} exp(sim(z_i, z_k)/t).
    sim is the cosine; with normalize=False the dot product (CL4SRec's).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent expects two (N, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    with torch.autocast(z1.device.type, enabled=False):     # logits near 1/t need fp32 resolution
        z = torch.cat([z1, z2]).float()
        z = F.normalize(z, dim=1) if normalize else z
        logits = z @ z.T / temperature
        logits.fill_diagonal_(float("-inf"))
        positives = torch.arange(2 * n, device=z.device).roll(n)  # i <-> i + n
        if not decoupled:
            return F.cross_entropy(logits, positives)
        anchors = torch.arange(2 * n, device=z.device)
        positive_logits = logits[anchors, positives]
        negatives_only = logits.index_put((anchors, positives), torch.tensor(float("-inf"), device=z.device))
        return (negatives_only.logsumexp(dim=1) - positive_logits).mean()


def multi_view_nt_xent(z: torch.Tensor, temperature: float = 0.5, decoupled: bool = False) -> torch.Tensor:
    """NT-Xent over V >= 2 views of N samples, every other view of a sample a positive (the
    multi-positive form of Khosla et al. 2020, as solo-learn uses for SimCLR with multi-crop).
    z: (V, N, D). For V = 2 it equals nt_xent(z[0], z[1]).

    l(a) = -1/|P(a)| sum_{p in P(a)} log exp(sim(a, p)/t) / sum_{k != a} exp(sim(a, k)/t), averaged over all VN anchors.
    decoupled: DCL (Yeh et al. 2022), the positives P(a) leave every denominator.
    """
    if z.dim() != 3 or z.shape[0] < 2:
        raise ValueError(f"multi_view_nt_xent expects (V >= 2, N, D), got {tuple(z.shape)}")
    views, n = z.shape[:2]
    with torch.autocast(z.device.type, enabled=False):
        flat = F.normalize(z.float().reshape(views * n, -1), dim=1)
        logits = flat @ flat.T / temperature
        self_mask = torch.eye(views * n, dtype=torch.bool, device=z.device)
        sample = torch.arange(n, device=z.device).repeat(views)
        positive = (sample[:, None] == sample[None, :]) & ~self_mask
        logits = logits.masked_fill(self_mask, float("-inf"))
        denominator = logits.masked_fill(positive, float("-inf")) if decoupled else logits
        log_prob = (logits - denominator.logsumexp(dim=1, keepdim=True)).masked_fill(self_mask, 0.0)
        return -(log_prob * positive).sum(1).div(views - 1).mean()


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None,
             temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE (van den Oord et al. 2018; MoCo, He et al. 2020, eq. 1). query, positive: (N, D), row i
    of each a positive pair; negatives: (K, D) shared by every query (MoCo's queue), or None to use
    the other rows of `positive` (in-batch keys, as in MoCo v3 and NNCLR). All rows are L2-normalised.

    l_i = -log exp(q_i.k_i/t) / (exp(q_i.k_i/t) + sum_{n in negatives(i)} exp(q_i.n/t)), averaged over i.
    """
    if query.shape != positive.shape or query.dim() != 2:
        raise ValueError(f"info_nce expects query and positive of one (N, D) shape, got {tuple(query.shape)} "
                         f"and {tuple(positive.shape)}")
    if negatives is not None and (negatives.dim() != 2 or negatives.shape[1] != query.shape[1]):
        raise ValueError(f"info_nce expects negatives of shape (K, {query.shape[1]}), got {tuple(negatives.shape)}")
    with torch.autocast(query.device.type, enabled=False):   # logits near 1/t need fp32 resolution
        q, k = F.normalize(query.float(), dim=1), F.normalize(positive.float(), dim=1)
        if negatives is None:
            logits = q @ k.T / temperature                     # the positive of row i is column i
            return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))
        n = F.normalize(negatives.float(), dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ n.T], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def cross_view_cross_entropy(targets: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """Multi-crop cross-entropy: targets (G, B, K) of the G global views, log_probs (V, B, K) of all V >= G
    views (the global ones first, in the same order). Target view i is never compared with itself.

    L = 1/(G(V-1)) sum_{i<G} sum_{j != i} 1/B sum_b -sum_k targets[i,b,k] log_probs[j,b,k].
    """
    g, v = targets.shape[0], log_probs.shape[0]
    if targets.dim() != 3 or log_probs.dim() != 3 or targets.shape[1:] != log_probs.shape[1:] or not 1 <= g <= v \
            or v < 2:
        raise ValueError(f"expected targets (G, B, K) and log_probs (V >= max(G, 2), B, K), got "
                         f"{tuple(targets.shape)} and {tuple(log_probs.shape)}")
    cross = -torch.einsum("gbk,vbk->gv", targets, log_probs) / targets.shape[1]     # (G, V)
    same_view = torch.eye(g, v, dtype=torch.bool, device=cross.device)
    return cross.masked_fill(same_view, 0.0).sum() / (g * (v - 1))


def pretext_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a pretext classifier (rotation: which quarter turn; jigsaw: which permutation),
    in fp32. logits (M, C), labels (M,) -> L = -mean_i log softmax(logits_i)[labels_i]."""
    with torch.autocast(logits.device.type, enabled=False):
        return F.cross_entropy(logits.float(), labels)
