"""The picture of a samplers × NFE study: a quality metric against NFE, one line per sampler family,
SDE samplers solid in warm colours and ODE samplers dashed in cool colours, so the two kinds are
told apart at a glance (and in black and white); NFE on a log axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from diffusion_lab.evaluation.table import EvalTable

#: line style and colour map of each kind
STYLES = {"SDE": ("-", "autumn", "o"), "ODE": ("--", "winter", "s")}


def plot_quality_vs_nfe(table: EvalTable, metrics: Sequence[str] = ("fid",), path: str | Path | None = None,
                        title: str | None = None, log_y: bool = True) -> Any:
    """One panel per metric, metric against NFE per family (see the module docstring); saves to ``path``
    when given and returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = table.families()
    by_kind: dict[str, list[str]] = {"SDE": [], "ODE": []}
    for fam, rows in families.items():
        by_kind.setdefault(rows[0]["kind"], []).append(fam)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for kind, fams in by_kind.items():
            style, cmap_name, marker = STYLES.get(kind, ("-.", "gray", "^"))
            cmap = plt.get_cmap(cmap_name)
            for i, fam in enumerate(fams):
                rows = [r for r in families[fam] if r.get(metric) is not None]
                if not rows:
                    continue
                colour = cmap(0.85 * i / max(1, len(fams) - 1)) if len(fams) > 1 else cmap(0.3)
                ax.plot([float(r["nfe"]) for r in rows], [float(r[metric]) for r in rows], linestyle=style,
                        marker=marker, color=colour, label=f"{fam} ({kind})", linewidth=1.8, markersize=4)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("NFE (network calls per sample)")
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{title + ': ' if title else ''}{metric} vs NFE (SDE solid, ODE dashed)", fontsize=10)
    axes[0][-1].legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig
