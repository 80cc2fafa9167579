"""The report's matplotlib figures (Agg backend: no display needed). Each function returns a
figure for `Page.figure`; none reads files."""

from __future__ import annotations

from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cluster_colors(k: int) -> list[Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(k)]


PHASE_COLORS = {"warmup": "#d97706", "experts": "#2563eb"}


def training_curves(histories: dict[str, dict[str, Any]]) -> Any:
    """Per phase: the loss of every optimizer step, the mean training loss and the validation
    Jaccard of every epoch (the kept epoch marked)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for phase, h in histories.items():
        color = PHASE_COLORS.get(phase)
        epochs = h.get("epochs", [])
        steps = [loss for e in epochs for loss in e.get("step_losses", [])]
        if steps:
            axes[0].plot(np.arange(1, len(steps) + 1), steps, color=color, lw=0.8, alpha=0.8, label=phase)
        x = [e["epoch"] for e in epochs]
        axes[1].plot(x, [e["train_loss"] for e in epochs], "o-", color=color, label=phase)
        axes[2].plot(x, [e["val_jaccard"] for e in epochs], "o-", color=color, label=phase)
        best = h.get("best_epoch")
        if best in x:
            axes[2].plot([best], [epochs[x.index(best)]["val_jaccard"]], "*", ms=15, color=color, mec="black")
    for ax, title, ylabel, xlabel in ((axes[0], "loss per optimizer step", "training loss", "step"),
                                      (axes[1], "mean training loss per epoch", "training loss", "epoch"),
                                      (axes[2], "validation Jaccard (★ kept epoch)", "Jaccard", "epoch")):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def patient_map(xy: np.ndarray, labels: np.ndarray, num_clusters: int, method: str) -> Any:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 6))
    colors = cluster_colors(num_clusters)
    size = 30 if len(xy) < 300 else 8
    for k in range(num_clusters):
        m = labels == k
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=size, color=colors[k], alpha=0.75, lw=0, label=f"cluster {k} ({int(m.sum())})")
            cx, cy = np.median(xy[m], axis=0)
            ax.annotate(str(k), (cx, cy), fontsize=13, weight="bold", ha="center", va="center",
                        bbox={"boxstyle": "circle,pad=0.25", "fc": "white", "ec": colors[k], "alpha": 0.9})
    ax.set_title(f"training visits, {method} of the standardised warm-up features", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=1.5)
    fig.tight_layout()
    return fig


def heatmap(matrix: np.ndarray, *, title: str, xlabel: str, ylabel: str, xticks: list[str], yticks: list[str],
            cmap: str = "viridis", fmt: str = "{:.2f}", mark: np.ndarray | None = None,
            notes: list[list[str]] | None = None) -> Any:
    """An annotated heatmap (NaN cells blank); `mark`: a boolean mask of cells outlined in black;
    `notes`: text for the NaN cells (e.g. why a sweep cell has no score), drawn uncoloured."""
    plt = _plt()
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4.5, 0.7 * cols + 2.5), max(3.5, 0.55 * rows + 1.8)))
    masked = np.ma.masked_invalid(matrix)
    im = ax.imshow(masked, cmap=cmap, aspect="auto")
    if np.isfinite(matrix).any():   # a scale for nothing would be matplotlib's arbitrary 0…1
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    for i in range(rows):
        for j in range(cols):
            v = matrix[i, j]
            if np.isfinite(v):
                r, g, b_, _ = im.cmap(im.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b_ < 0.5
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8 if cols > 8 else 9,
                        color="white" if dark else "black")
            elif notes is not None and notes[i][j]:
                ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=8, color="#52606d", style="italic")
            if mark is not None and mark[i, j]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=2))
    ax.set_xticks(range(cols), xticks)
    ax.set_yticks(range(rows), yticks)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def sizes_and_load(sizes: list[int], load_share: np.ndarray | None, mean_gate: np.ndarray | None) -> Any:
    """Training visits per cluster; per expert, the share of training visits whose top-n holds it
    and its mean gate weight."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if load_share is not None else 1, figsize=(12 if load_share is not None else 6, 3.6),
                             squeeze=False)
    k = len(sizes)
    ax = axes[0, 0]
    bars = ax.bar(range(k), sizes, color=cluster_colors(k))
    ax.bar_label(bars, fontsize=9)
    ax.set_ylim(0, max(sizes, default=0) * 1.12 + 1)
    ax.set_xticks(range(k), [str(i) for i in range(k)])
    ax.set_xlabel("cluster")
    ax.set_ylabel("training visits")
    ax.set_title("cluster sizes", fontsize=11)
    if load_share is not None:
        ax = axes[0, 1]
        e = len(load_share)
        x = np.arange(e)
        ax.bar(x - 0.2, load_share, width=0.4, color="#2563eb", label="share of visits routed to it (top-n)")
        ax.bar(x + 0.2, mean_gate, width=0.4, color="#93c5fd", label="mean gate weight G")
        ax.set_xticks(x, [str(i) for i in range(e)])
        ax.set_xlabel("expert")
        ax.set_ylim(0, 1.25)
        ax.set_title("expert load (training visits)", fontsize=11)
        ax.legend(fontsize=8, loc="upper center", ncols=2, frameon=False)
    for a in axes.ravel():
        a.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def chapter_composition(shares: np.ndarray, names: list[str]) -> Any:
    """Stacked bars: each cluster's diagnoses by ICD chapter (rows = clusters, columns = `names`)."""
    plt = _plt()
    k = shares.shape[0]
    fig, ax = plt.subplots(figsize=(12, max(2.6, 0.45 * k + 1.6)))
    cmap = plt.get_cmap("tab20")
    left = np.zeros(k)
    for j, name in enumerate(names):
        color = "#cbd2d9" if name == "Other" else cmap(j % 20)
        ax.barh(range(k), shares[:, j], left=left, color=color, label=name, edgecolor="white", lw=0.5)
        for i in range(k):
            if shares[i, j] >= 0.08:
                ax.text(left[i] + shares[i, j] / 2, i, f"{100 * shares[i, j]:.0f}%", ha="center", va="center", fontsize=8)
        left += shares[:, j]
    ax.set_yticks(range(k), [f"cluster {i}" for i in range(k)])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the cluster's diagnosis codes")
    ax.set_title("disease categories (ICD chapters) per cluster", fontsize=11)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def per_cluster_bars(values: dict[str, list[float]], overall: dict[str, float]) -> Any:
    """Grouped bars of a few metrics per cluster, the whole split's value as a dashed line."""
    k = len(next(iter(values.values())))
    return grouped_bars(values, [str(i) for i in range(k)], xlabel="cluster (test visits)",
                        title="accuracy per cluster (dashed: whole test split)", overall=overall)


def grouped_bars(values: dict[str, list[float]], xticks: list[str], *, xlabel: str, title: str,
                 overall: dict[str, float] | None = None, notes: list[str] | None = None) -> Any:
    """Grouped bars of a few metrics (0…1) per group; NaN draws no bar. `overall`: a dashed line per
    metric; `notes`: text at the foot of a group (e.g. why a sweep value has no score)."""
    plt = _plt()
    names = list(values)
    k = len(xticks)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * k + 3), 3.6))
    width = 0.8 / len(names)
    colors = ["#2563eb", "#059669", "#d97706", "#7c3aed"]
    for j, name in enumerate(names):
        x = np.arange(k) - 0.4 + width * (j + 0.5)
        ax.bar(x, np.nan_to_num(values[name]), width=width, color=colors[j % 4], label=name)
        if overall is not None:
            ax.axhline(overall[name], color=colors[j % 4], ls="--", lw=1)
    for i, note in enumerate(notes or []):
        if note:
            ax.text(i, 0.02, note, ha="center", va="bottom", fontsize=8, color="#52606d", style="italic")
    ax.set_xticks(range(k), xticks)
    ax.set_xlabel(xlabel)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, ncols=len(names))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def sweep_scatter(x: list[Any], scored: list[float | None], unscored: list[float | None], *, xlabel: str, log_x: bool,
                  best: int | None) -> Any:
    """Validation Jaccard of each trial against one sampled parameter: `scored` (filled, at the tuned
    threshold) where a trial completed, `unscored` (hollow, best epoch at the fixed threshold) for a
    trial stopped early; None draws nothing. `best`: the index starred."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for ys, style in ((scored, {"color": "#2563eb", "label": "completed: val Jaccard, tuned threshold"}),
                      (unscored, {"facecolors": "none", "edgecolors": "#9aa5b1",
                                  "label": "stopped early: best epoch's val Jaccard, fixed threshold"})):
        pts = [(xi, yi) for xi, yi in zip(x, ys) if yi is not None]
        if pts:
            ax.scatter(*zip(*pts), s=40, **style)
    if best is not None:
        ax.plot([x[best]], [scored[best]], "*", ms=16, color="#d97706", mec="black", label="best")
    if log_x:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())   # labelled minor ticks overlap within a decade
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation Jaccard")
    ax.set_title(f"validation Jaccard vs {xlabel}", fontsize=11)
    ax.grid(alpha=0.3)
    if ax.collections or ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def trial_curves(curves: list[tuple[str, list[dict[str, Any]], bool]]) -> Any:
    """Per trial (label, [{"epoch", "train_loss", "val_jaccard"}, ...], stopped early): validation
    Jaccard and mean training loss per epoch (None: a gap); a trial stopped early is dashed and ends
    in a cross."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    colors = plt.get_cmap("tab10")
    for i, (label, points, stopped) in enumerate(curves):
        x = [p["epoch"] for p in points]
        for ax, key in ((axes[0], "val_jaccard"), (axes[1], "train_loss")):
            y = [np.nan if p[key] is None else p[key] for p in points]
            ax.plot(x, y, "--" if stopped else "-", marker="o", ms=4, color=colors(i % 10), label=label)
            if stopped:
                ax.plot(x[-1:], y[-1:], "X", ms=9, color=colors(i % 10))
    for ax, title, ylabel in ((axes[0], "validation Jaccard per epoch (fixed threshold)", "Jaccard"),
                              (axes[1], "mean training loss per epoch", "training loss")):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig
