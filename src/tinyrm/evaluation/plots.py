"""Pictures of a results JSON: ``tinyrm eval ... --plot FILE.png`` and ``tinyrm report RESULTS.json``.

One PNG, three panels, each drawn from what the results carry and skipped with a note where they do
not carry it (a results JSON of an older tinyrm, a process evaluation):

* **reliability diagram** from the ``calibration`` block (``{"ece", "brier", "log_loss", "bins": [{"count",
  "mean_predicted", "observed"}, ...]}``): the observed share of each probability bin against its mean
  prediction, the diagonal, and each bin's count above its bar;
* **accuracy per subset** (per domain where there are no subsets) with 95% Wilson intervals, and the
  ``length`` heuristic's accuracy on the same pairs beside each bar (the results' ``length_heuristic``,
  :func:`tinyrm.evaluation.heuristics.length_reference`);
* **length bias**: accuracy when the chosen response is the longer one and when it is the shorter one
  (``length_bias``, :mod:`tinyrm.evaluation.length_bias`), with their intervals and pair counts.

Drawn with matplotlib's Agg canvas on a ``Figure`` of its own (no pyplot, no display, no global state).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .heuristics import LENGTH_REFERENCE
from .length_bias import EQUAL, LONGER, SHORTER

Z95 = 1.959963984540054  # the two-sided 95% normal quantile
MODEL_COLOR, HEURISTIC_COLOR, NOTE_COLOR = "tab:blue", "tab:gray", "0.35"


@dataclass
class PlotReport:
    output: str
    panels: list[str] = field(default_factory=list)  # drawn: reliability, subsets, length_bias
    notes: list[str] = field(default_factory=list)  # why a panel, or part of one, was left out


def wilson_interval(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``n`` trials (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(correct / n, 0.0), 1.0)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Clamped to the point estimate too: at 0 / n or n / n rounding leaves a bound a hair past p, and
    # matplotlib refuses the negative error bar that makes.
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def accuracy_interval(accuracy: float, n: int) -> tuple[float, float]:
    """:func:`wilson_interval` of an accuracy over ``n`` pairs (the correct count is ``accuracy * n``)."""
    return wilson_interval(round(accuracy * n), n)


def find_calibration(results: Mapping) -> dict | None:
    """The results' ``calibration`` block: at the top (pairwise), else inside one entry (a process
    evaluation's ``steps``); None without one that has bins. ``what`` says whose it is (pairs, steps, ...)."""
    candidates = [("pairs", results.get("calibration"))]
    candidates += [(key, value.get("calibration")) for key, value in results.items() if isinstance(value, Mapping)]
    for what, block in candidates:
        if isinstance(block, Mapping) and isinstance(block.get("bins"), list) and block["bins"]:
            return {**block, "what": what}
    return None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _note(ax, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9, color=NOTE_COLOR,
            transform=ax.transAxes)


def draw_reliability(ax, block: Mapping) -> None:
    """Observed share per bin (bars, count above each), mean prediction per bin (dots), the diagonal."""
    bins = block["bins"]
    width = 1.0 / len(bins)
    centres = [(i + 0.5) * width for i in range(len(bins))]
    ax.plot([0, 1], [0, 1], linestyle="--", color=HEURISTIC_COLOR, linewidth=1, label="perfectly calibrated")
    for centre, b in zip(centres, bins):
        count, observed = int(b.get("count") or 0), _number(b.get("observed"))
        if not count or observed is None:
            ax.text(centre, 0.02, "0", ha="center", va="bottom", fontsize=7, color=NOTE_COLOR)
            continue
        ax.bar(centre, observed, width=width * 0.9, color=MODEL_COLOR, alpha=0.75, edgecolor="white")
        predicted = _number(b.get("mean_predicted"))
        if predicted is not None:
            ax.plot([predicted], [observed], marker="o", markersize=4, color="black")
        ax.text(centre, min(observed + 0.02, 0.97), f"{count}", ha="center", va="bottom", fontsize=7,
                rotation=90 if count >= 10_000 else 0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("predicted P (bin; dot: mean prediction)")
    ax.set_ylabel("observed share correct")
    figures = [f"{label} {_number(block.get(key)):.3f}" for key, label in
               (("ece", "ECE"), ("brier", "Brier"), ("log_loss", "log loss")) if _number(block.get(key)) is not None]
    what = block.get("what", "pairs")
    ax.set_title(f"reliability of {what}" + (f" ({', '.join(figures)})" if figures else ""), fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    note = "each pair counted\nas (P, 1) and (1 - P, 0)" if what == "pairs" else f"each of the {what} counted once"
    ax.text(0.02, 0.9, f"counts above the bars; {note}", ha="left", va="top", fontsize=7, color=NOTE_COLOR,
            transform=ax.transAxes)


def group_rows(results: Mapping) -> tuple[str, list[tuple[str, float, int]]]:
    """``("subsets" | "domains", [(name, accuracy, n), ...])``, overall first; subsets where there are any."""
    rows = []
    if _number(results.get("accuracy")) is not None and int(results.get("n") or 0) > 0:
        rows.append(("overall", float(results["accuracy"]), int(results["n"])))
    for group in ("subsets", "domains"):
        entries = results.get(group)
        if isinstance(entries, Mapping) and entries:
            rows += [(str(name), float(row["accuracy"]), int(row["n"])) for name, row in entries.items()
                     if isinstance(row, Mapping) and _number(row.get("accuracy")) is not None and row.get("n")]
            return group, rows
    return "subsets", rows


def reference_accuracy(reference: Mapping | None, group: str, name: str) -> float | None:
    if not isinstance(reference, Mapping):
        return None
    row = reference if name == "overall" else (reference.get(group) or {}).get(name)
    return _number(row.get("accuracy")) if isinstance(row, Mapping) else None


def draw_subsets(ax, group: str, rows: list[tuple[str, float, int]], reference: Mapping | None) -> None:
    """Horizontal bars per subset, model (with its 95% Wilson interval) above the length heuristic."""
    height = 0.38 if reference else 0.7
    for i, (name, accuracy, n) in enumerate(rows):
        y = len(rows) - 1 - i
        low, high = accuracy_interval(accuracy, n)
        ax.barh(y + (height / 2 if reference else 0), accuracy, height=height, color=MODEL_COLOR,
                xerr=[[accuracy - low], [high - accuracy]], error_kw={"elinewidth": 1, "capsize": 3},
                label="model (95% Wilson interval)" if i == 0 else None)
        ax.text(min(high + 0.01, 0.99), y + (height / 2 if reference else 0), f"{accuracy:.3f} (n={n})",
                va="center", fontsize=7)
        heuristic = reference_accuracy(reference, group, name)
        if heuristic is not None:
            ax.barh(y - height / 2, heuristic, height=height, color=HEURISTIC_COLOR, alpha=0.6,
                    label="length heuristic" if i == 0 else None)
            ax.text(min(heuristic + 0.01, 0.99), y - height / 2, f"{heuristic:.3f}", va="center", fontsize=7,
                    color=NOTE_COLOR)
    ax.axvline(0.5, color="black", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(rows)), [name for name, _, _ in reversed(rows)], fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(0, 1.18)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("accuracy (ties count as wrong; dotted: chance)")
    ax.set_title(f"accuracy per {group[:-1]}" + ("" if reference else " (no length heuristic in these results)"),
                 fontsize=10, loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, fontsize=8, frameon=False)


def draw_length_bias(ax, entry: Mapping) -> None:
    """Accuracy when the chosen response is longer / shorter, with intervals and pair counts."""
    sides = [(LONGER, "chosen longer"), (SHORTER, "chosen shorter")]
    for x, (key, _) in enumerate(sides):
        row = entry.get(key) or {}
        accuracy, n = _number(row.get("accuracy")), int(row.get("n") or 0)
        if accuracy is None or not n:
            ax.text(x, 0.05, "no pairs", ha="center", fontsize=8, color=NOTE_COLOR)
            continue
        low, high = accuracy_interval(accuracy, n)
        ax.bar(x, accuracy, width=0.6, color=MODEL_COLOR if key == LONGER else "tab:orange",
               yerr=[[accuracy - low], [high - accuracy]], error_kw={"elinewidth": 1, "capsize": 4})
        ax.text(x, min(high + 0.02, 0.97), f"{accuracy:.3f}\nn={n}", ha="center", va="bottom", fontsize=8)
    ax.axhline(0.5, color="black", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(sides)), [label for _, label in sides])
    ax.set_xlim(-0.6, len(sides) - 0.4)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy (95% Wilson interval)")
    agrees = _number(entry.get("agrees_with_longer"))
    ax.set_title("length bias" + (f" (prefers the longer response {agrees:.3f})" if agrees is not None else ""),
                 fontsize=10)
    equal = int((entry.get(EQUAL) or {}).get("n") or 0)
    if equal:
        ax.text(0.98, 0.98, f"{equal} pairs of equal length left out", ha="right", va="top", fontsize=7,
                color=NOTE_COLOR, transform=ax.transAxes)


def plot_results(results: Mapping, output: str | Path, title: str | None = None) -> PlotReport:
    """Draw ``results`` (any saved results JSON, as a dict) into the PNG ``output``; see the module docstring.
    ``ValueError`` when the results hold nothing to draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(results, Mapping):
        raise ValueError("a results JSON is an object, not " + type(results).__name__)
    report = PlotReport(output=str(output))
    calibration = find_calibration(results)
    group, rows = group_rows(results)
    bias = results.get("length_bias") if isinstance(results.get("length_bias"), Mapping) else None
    if calibration is None and not rows and bias is None:
        raise ValueError("nothing to draw: no calibration block, no accuracy and no length_bias in these results")
    reference = results.get(LENGTH_REFERENCE) if isinstance(results.get(LENGTH_REFERENCE), Mapping) else None
    subsets_height = max(2.5, 0.3 * len(rows) * (2 if reference else 1) + 1.5)
    fig = Figure(figsize=(12, 4.3 + subsets_height), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=[4.3, subsets_height])
    top_left, top_right, bottom = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    if calibration is not None:
        draw_reliability(top_left, calibration)
        report.panels.append("reliability")
    else:
        report.notes.append("reliability diagram skipped: no calibration block in these results")
        _note(top_left, "reliability diagram: no calibration block in these results\n"
                        "(written by `tinyrm eval` from the version with calibration on)")
    if bias is not None:
        draw_length_bias(top_right, bias)
        report.panels.append("length_bias")
    else:
        report.notes.append("length bias skipped: no length_bias in these results")
        _note(top_right, "length bias: no length_bias in these results")
    if rows:
        draw_subsets(bottom, group, rows, reference)
        report.panels.append("subsets")
        if reference is None:
            report.notes.append(f"no {LENGTH_REFERENCE} in these results: the per-{group[:-1]} panel shows the "
                                "model alone")
    else:
        report.notes.append("accuracy per subset skipped: no accuracy in these results")
        _note(bottom, "accuracy per subset: no accuracy in these results")
    accuracy, n = _number(results.get("accuracy")), results.get("n")
    headline = title or str(results.get("model") or "results")
    if accuracy is not None:
        headline += f": accuracy {accuracy:.3f} on {n} pairs"
    fig.suptitle(headline, fontsize=11)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    return report
