"""The report's figures (matplotlib, written as PNG without a display)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

DPI = 120


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def lines_with_errors(
    x: Sequence[float], series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str, xlabel: str,
    ylabel: str, path: Path, zero_line: bool = True,
) -> Path:  # fmt: skip
    """One line per series (mean) with ± std error bars, each series nudged sideways so the bars
    stay readable: e.g. MTL gain against task correlation."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    step = (max(x) - min(x)) / max(len(x) - 1, 1) if len(x) > 1 else 1.0
    for i, (name, (mean, std)) in enumerate(series.items()):
        shift = (i - (len(series) - 1) / 2) * step * 0.03
        ax.errorbar([v + shift for v in x], mean, yerr=std, marker="o", capsize=3, label=name)
    if zero_line:
        ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_title(title, fontsize=10)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    return _save(fig, path)


def bubbles(points: Mapping[str, tuple[float, float, float]], *, title: str, xlabel: str, ylabel: str, path: Path) -> Path:
    """PLE paper Fig. 3 style: one bubble per model at (gain on task A, gain on task B); the size
    shows a third figure (e.g. the gain on the other tasks). Upper right beats single-task on both."""
    fig, ax = plt.subplots(figsize=(6.4, 5))
    sizes = [abs(s) for _, _, s in points.values()]
    scale = 1500.0 / max(max(sizes), 1e-12)
    for name, (x, y, s) in points.items():
        ax.scatter([x], [y], s=80 + scale * abs(s), alpha=0.55, edgecolor="black")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def grouped_bars(
    groups: Mapping[str, Mapping[str, tuple[float, float]]], *, title: str, ylabel: str, path: Path, ncols: int = 3
) -> Path:
    """One panel per group (e.g. a gate), one bar per member (e.g. an expert) with a std error bar."""
    names = list(groups)
    ncols = min(ncols, len(names))
    nrows = (len(names) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.6 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        members = groups[name]
        ax.bar(range(len(members)), [m for m, _ in members.values()], yerr=[s for _, s in members.values()],
               capsize=2, color="tab:blue", alpha=0.75)  # fmt: skip
        ax.set_xticks(range(len(members)), list(members), rotation=60, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def bar_chart(
    labels: Sequence[str], series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str, ylabel: str,
    path: Path,
) -> Path:  # fmt: skip
    """Side-by-side bars: one group per label, one bar per series, std as error bars."""
    fig, ax = plt.subplots(figsize=(min(13, max(6, 0.6 * len(labels) * len(series))), 4))
    width = 0.8 / max(len(series), 1)
    for i, (name, (mean, std)) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(labels))], mean, width, yerr=std, capsize=2, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))], labels, rotation=30, ha="right")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def category_panels(
    labels: Sequence[str], panels: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str, ylabel: str,
    path: Path,
) -> Path:  # fmt: skip
    """One panel per metric (each on its own scale), one point with a std bar per category."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, (mean, std)) in zip(axes.flat, panels.items()):
        ax.errorbar(range(len(labels)), mean, yerr=std, fmt="o-", capsize=3)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
