"""Next-item ranking: every item is ranked for every held-out user (full ranking: no sampled negatives,
which change the order of methods; Krichene and Rendle 2020), the items the user already had are left
out, and the held-out item's rank gives

    HR@k   = 1 if rank <= k                     (hit rate)
    NDCG@k = 1 / log2(rank + 1) if rank <= k    (one relevant item, so the ideal DCG is 1)
    MRR    = 1 / rank

averaged over users. Ties are broken at random, exactly in expectation: a target tied with e - 1
other items and below g counts as each of the ranks g + 1 .. g + e with probability 1/e (a
popularity baseline ties many items; ranking it first among its ties would flatter it).

Baselines: `most_popular` (the items most users had in training) and `item_knn` (items scored by
their cosine co-occurrence with the user's items over the training histories; Sarwar et al. 2001).
"""
from __future__ import annotations

from typing import Callable

import torch

from selfsup.interactions.data import ITEM_OFFSET, HeldOutItems, LeaveOneOut, user_item_matrix

Scorer = Callable[[torch.Tensor], torch.Tensor]      # histories (B, L) -> scores (B, vocab_size)


def tie_aware_metrics(greater: torch.Tensor, equal: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Per-row HR@k, NDCG@k and reciprocal rank in expectation over random tie-breaking: `greater`
    items score above the target and `equal` (>= 1, the target included) score the same."""
    greater, equal = greater.double(), equal.double()
    n = int((greater + equal).max().item()) + 1
    positions = torch.arange(1, n + 1, dtype=torch.float64)
    discount = torch.cat([torch.zeros(1, dtype=torch.float64), (1.0 / torch.log2(positions + 1)).cumsum(0)])
    harmonic = torch.cat([torch.zeros(1, dtype=torch.float64), (1.0 / positions).cumsum(0)])
    low, high = greater.long(), (greater + equal).long()          # ranks low + 1 .. high
    top_low, top_high = low.clamp(max=k), high.clamp(max=k)
    return {"hr": (top_high - top_low).double() / equal,
            "ndcg": (discount[top_high] - discount[top_low]) / equal,
            "mrr": (harmonic[high] - harmonic[low]) / equal}


def rank_counts(scores: torch.Tensor, targets: torch.Tensor, seen: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (B, vocab_size) over tokens, targets (B,) -> (items above the target, items tied with it,
    the target included), over item tokens only and without the items each user had (a repeat of one
    of them as the target is still ranked)."""
    scores = scores.float().clone()
    scores[:, :ITEM_OFFSET] = float("-inf")
    rows = torch.arange(len(targets), device=scores.device)
    target_scores = scores[rows, targets].clone()
    for r, items in enumerate(seen):
        scores[r, items.to(scores.device)] = float("-inf")
    scores[rows, targets] = target_scores
    greater = (scores > target_scores[:, None]).sum(1)
    equal = (scores == target_scores[:, None]).sum(1)
    return greater.cpu(), equal.cpu()


def ranking_metrics(scorer: Scorer, held_out: HeldOutItems, k: int = 10, batch_size: int = 256,
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """{'hr', 'ndcg', 'mrr', 'users'}: the mean metrics of scorer's rankings for the held-out users (the
    histories go to `device`; the ranking is done where the scorer's scores are)."""
    per_row = ranking_per_user(scorer, held_out, k, batch_size, device)
    return {**{name: round(float(values.mean()), 5) for name, values in per_row.items()}, "users": len(held_out)}


def ranking_per_user(scorer: Scorer, held_out: HeldOutItems, k: int = 10, batch_size: int = 256,
                     device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {"hr": [], "ndcg": [], "mrr": []}
    for start in range(0, len(held_out), batch_size):
        rows = slice(start, start + batch_size)
        with torch.no_grad():
            scores = scorer(held_out.histories[rows].to(device))
        greater, equal = rank_counts(scores, held_out.targets[rows].to(scores.device), held_out.seen[rows])
        for name, values in tie_aware_metrics(greater, equal, k).items():
            parts[name].append(values)
    return {name: torch.cat(values) for name, values in parts.items()}


def item_counts(histories: list[list[int]], vocab_size: int) -> torch.Tensor:
    """How many users had each item token in their training history (float (vocab_size,))."""
    users_items = [torch.tensor(sorted(set(h)), dtype=torch.long) for h in histories if h]
    return torch.bincount(torch.cat(users_items), minlength=vocab_size).double() if users_items \
        else torch.zeros(vocab_size, dtype=torch.float64)


def most_popular(train_histories: list[list[int]], vocab_size: int) -> Scorer:
    counts = item_counts(train_histories, vocab_size).float()
    return lambda histories: counts.to(histories.device).expand(len(histories), -1)


def item_knn(train_histories: list[list[int]], vocab_size: int) -> Scorer:
    """score(j) = sum over the user's items i of cos(i, j), the cosine of the items' user columns in the
    training histories; computed as ((h / sqrt(d)) X^T) X / sqrt(d) without the items-by-items matrix."""
    users_items = user_item_matrix(train_histories, vocab_size)
    scale = users_items.sum(0).clamp_min(1.0).rsqrt()

    def score(histories: torch.Tensor) -> torch.Tensor:
        had = user_item_matrix(histories.cpu(), vocab_size)
        return ((had * scale) @ users_items.T) @ users_items * scale
    return score


COLD_START = 5          # users with at most this many items before the target are cold-start users
LENGTH_BUCKETS = 4      # the metric by history length: users in this many equal-sized groups


def ranking_report(model: Scorer, split: LeaveOneOut, part: str, vocab_size: int, k: int = 10,
                   device: torch.device | str = "cpu") -> dict:
    """The model's and the baselines' HR@k, NDCG@k and MRR on the part ('val' or 'test') of a
    leave-one-out split; the cold-start users (at most COLD_START items before the target) apart;
    every user with the history cut to its COLD_START newest items; and the model's NDCG@k by
    history length."""
    held_out = split.part(part)
    baselines = {"most_popular": most_popular(split.train_histories, vocab_size),
                 "item_knn": item_knn(split.train_histories, vocab_size)}
    scorers = {"model": model, **baselines}
    report = {"part": part, "k": k, "users": len(held_out), "unscored_users": split.unscored_users,
              **{name: ranking_metrics(s, held_out, k, device=device) for name, s in scorers.items()}}
    cold = (held_out.history_lengths <= COLD_START).nonzero().flatten()
    report["cold_start"] = {"users": len(cold), "max_items": COLD_START}
    if len(cold):
        report["cold_start"].update({name: ranking_metrics(s, held_out.select(cold), k, device=device)
                                     for name, s in scorers.items()})
    short = held_out.truncated(COLD_START)
    report[f"last_{COLD_START}_items"] = {name: ranking_metrics(s, short, k, device=device)
                                          for name, s in scorers.items()}
    report["by_history_length"] = _by_history_length(model, held_out, k, device)
    return report


def _by_history_length(model: Scorer, held_out: HeldOutItems, k: int, device) -> list[dict]:
    ndcg = ranking_per_user(model, held_out, k, device=device)["ndcg"]
    order = held_out.history_lengths.argsort()
    rows = []
    for group in order.tensor_split(min(LENGTH_BUCKETS, len(order))):
        lengths = held_out.history_lengths[group]
        rows.append({"from": int(lengths.min()), "to": int(lengths.max()), "users": len(group),
                     "ndcg": round(float(ndcg[group].mean()), 5)})
    return rows
