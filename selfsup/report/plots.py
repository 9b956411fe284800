"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display needed).
Each function takes plain data and returns a Figure, or None when there is nothing to draw."""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from matplotlib.figure import Figure

PROTOCOL_STYLE = {"knn": ("kNN (frozen)", "tab:blue", "o"), "linear": ("linear probe (frozen)", "tab:orange", "s"),
                  "linear map": ("linear probe on feature maps (frozen)", "tab:brown", "P"),
                  "linear auto": ("linear probe, pooled or maps by cross-validation (frozen)", "tab:olive", "*"),
                  "linear maps-averaged": ("linear probes on three map layouts, averaged (frozen)", "tab:cyan", "X"),
                  "propagate": ("label propagation + kNN, fixed settings (frozen)", "tab:purple", "D"),
                  "propagate cv": ("label propagation + kNN, cross-validated settings (frozen)", "tab:pink", "d"),
                  "finetune": ("fine-tune", "tab:green", "^"),
                  "selftrain": ("fine-tune + propagation + fine-tune", "tab:red", "v"),
                  "supervised": ("supervised from scratch", "black", "x")}


def training_curves(rows: list[dict]) -> Figure | None:
    """Loss, learning rate and images/s against the step, from metrics.jsonl's training rows."""
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None
    fig = Figure(figsize=(12, 3.2), layout="constrained")
    steps = [r["step"] for r in rows]
    for ax, key, title in zip(fig.subplots(1, 3), ("loss", "lr", "images_per_s"),
                              ("pretext loss", "learning rate", "throughput (images/s)")):
        ax.plot(steps, [r[key] for r in rows], lw=1.2, marker="o" if len(rows) < 30 else None)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    return fig


def online_curves(rows: list[dict]) -> Figure | None:
    """Online kNN top-1, a recommender's validation HR@k and NDCG@k, RankMe and normalised std against
    the epoch (the monitor's rows)."""
    rows = [r for r in rows if "rankme" in r or "online_knn_top1" in r]
    if not rows:
        return None
    ranking = sorted({k for r in rows for k in r if k.startswith(("online_hr", "online_ndcg"))})
    named = [("online_knn_top1", "online kNN top-1 (%)"),
             *((k, f"validation {k.removeprefix('online_').upper().replace('HR', 'HR@').replace('NDCG', 'NDCG@')}")
               for k in ranking),
             ("rankme", "RankMe (effective rank)"), ("std", "normalised std (collapse if ~0)")]
    panels = [(k, t) for k, t in named if any(k in r for r in rows)]
    fig = Figure(figsize=(4 * len(panels), 3.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, title) in zip(axes, panels):
        points = [(r["epoch"], r[key] * (100 if key == "online_knn_top1" else 1)) for r in rows if key in r]
        ax.plot(*zip(*points), marker="o", lw=1.2)
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    return fig


def label_efficiency(results: list[dict], knn_k: int) -> Figure | None:
    """Top-1 (mean ± std over seeds) against the number of labels, one line per protocol (the linear
    probe: per kind of features); for each line and budget the newest result counts (kNN: the run's own k)."""
    newest: dict[tuple, dict] = {}
    for r in results:
        if r["protocol"] == "knn" and r["settings"].get("k") != knn_k:
            continue
        newest[(_line(r), r["num_labels"])] = r
    if not newest:
        return None
    lines = defaultdict(list)
    order = list(PROTOCOL_STYLE)
    for (protocol, n), r in sorted(newest.items(), key=lambda item: (_rank(order, item[0][0]), item[0][1])):
        lines[protocol].append((n, 100 * r["mean"], 100 * r["std"]))
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for protocol, points in lines.items():
        label, colour, marker = PROTOCOL_STYLE.get(protocol, (protocol, None, "o"))
        n, mean, std = zip(*points)
        ax.errorbar(n, mean, yerr=std, label=label, color=colour, marker=marker, capsize=3, lw=1.5)
    ax.set_xscale("log")
    ax.set(xlabel="labelled training images (log scale)", ylabel="test top-1 (%)",
           title="label efficiency: what pretraining buys")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def _line(row: dict) -> str:
    """The curve a result belongs to: its protocol, told apart for a linear probe of feature maps (or of
    the features cross-validation chose) and for propagation's two ways of setting itself."""
    if row["protocol"] == "linear" and row["settings"].get("features", "pooled") != "pooled":
        return f"linear {row['settings']['features']}"
    if row["protocol"] == "propagate" and row["settings"].get("choice") == "cross-validated":
        return "propagate cv"
    return row["protocol"]


def _rank(order: list[str], name: str) -> int:
    return order.index(name) if name in order else len(order)


def pca_2d(feats: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, 2): the projection on the two leading principal components."""
    centred = feats.double() - feats.double().mean(0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False, niter=6)
    return (centred @ v[:, :2]).float()


def embedding_maps(maps: dict[str, torch.Tensor], labels: torch.Tensor | None, classes: list[str]) -> Figure:
    """One scatter per 2-D map (PCA, t-SNE, ...), points coloured by class when labels are known."""
    fig = Figure(figsize=(6 * len(maps) + 1.5, 5.2), layout="constrained")
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, (name, xy) in zip(axes, maps.items()):
        if labels is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6)
        else:
            for c in labels.unique().tolist():
                pick = labels == c
                ax.scatter(xy[pick, 0], xy[pick, 1], s=4, alpha=0.7, color=_class_colour(c),
                           label=classes[c] if c < len(classes) else str(c))
        ax.set(title=f"test embeddings, {name}", xticks=[], yticks=[])
    if labels is not None:
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=4, frameon=False)
    return fig


def _grid(rows: list[list[torch.Tensor]], row_titles: list[str], title: str, cell: tuple[float, float],
          draw: Callable) -> Figure:
    """A figure of len(rows) rows of cells, each row titled on its left; draw(ax, i, j, item) fills the cell
    of rows[i][j] (cells past a row's end stay empty)."""
    columns = max(len(r) for r in rows)
    fig = Figure(figsize=(cell[0] * columns + 1.6, cell[1] * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    fig.suptitle(title)
    for i, row in enumerate(rows):
        for j in range(columns):
            ax = axes[i][j]
            ax.set(xticks=[], yticks=[])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                draw(ax, i, j, row[j])
        axes[i][0].set_ylabel(row_titles[i], rotation=0, ha="right", va="center", fontsize=8)
    return fig


def image_grid(rows: list[list[torch.Tensor]], row_titles: list[str], title: str,
               frames: list[list[str | None]] | None = None) -> Figure:
    """A grid of images (float (C, H, W) in [0, 1]); frames colour each image's border (None: no border)."""
    def draw(ax, i, j, image):
        image = image.clamp(0, 1)
        if image.shape[0] == 1:
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(image[:3].permute(1, 2, 0).numpy())
        colour = frames[i][j] if frames else None
        if colour:
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set(color=colour, linewidth=3)
    return _grid(rows, row_titles, title, (1.1, 1.15), draw)


def spectrogram_grid(rows: list[list[torch.Tensor]], row_titles: list[str], column_titles: list[str],
                     title: str) -> Figure:
    """A grid of log-mel spectrograms ((1, n_mels, frames) or (n_mels, frames); low frequencies at the
    bottom), each scaled to its own range; column_titles above the first row."""
    def draw(ax, i, j, spectrogram):
        ax.imshow(spectrogram.reshape(-1, spectrogram.shape[-1]).float().numpy(), origin="lower", aspect="auto",
                  cmap="magma")
        if i == 0 and j < len(column_titles):
            ax.set_title(column_titles[j], fontsize=8)
    return _grid(rows, row_titles, title, (1.9, 1.3), draw)


def _class_colour(c: int):
    from matplotlib import colormaps
    palette = colormaps["tab20" if c >= 10 else "tab10"]
    return palette(c % palette.N)

