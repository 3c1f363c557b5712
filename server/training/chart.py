"""A grouped bar chart of retrieval metrics, base model vs adapters, written as PNG (matplotlib, no display)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def plot_metrics(results: Mapping[str, Mapping[str, float]], title: str, out: Path) -> Path:
    """`results`: {variant (base, adapter names): {metric: value}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(results)
    metrics = list(next(iter(results.values())))
    width = 0.8 / len(variants)
    figure, axes = plt.subplots(figsize=(1.4 * len(metrics) + 2, 4))
    for index, variant in enumerate(variants):
        positions = [m + (index - (len(variants) - 1) / 2) * width for m in range(len(metrics))]
        bars = axes.bar(positions, [results[variant][m] for m in metrics], width, label=variant)
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.set_xticks(range(len(metrics)), metrics)
    axes.set_ylim(0, 1.2)
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper center", ncol=len(variants), fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
