"""The evaluation report: `report.md` and its figures, from `metrics.compute_metrics` output.

`write_report_files(folder, metrics, per_judge=..., agreement=...)` writes, into a folder the
caller has made (an atomic output folder), `report.md` (how to read it, the summary table, the
sweep, win-rate, per-judge and judge-agreement tables, the figures embedded) and the figures:

- `leakage_vs_over_refusal.png`: each setting's leakage against its over-refusal;
- `pareto_<sweep>.png`: each sweep's points, one panel per attribute pair, Pareto front marked;
- `sweeps.png`: MIP and hypervolume of every sweep;
- `win_rates.png`: win / tie / loss shares per setting and attribute against the reference;
- `degeneracy.png`: degenerate rates, and the share of refusals that are degenerate loops.

A figure whose data is absent is not drawn, and `report.md` says so. `summary_table(metrics)`
is the summary table alone (the evaluate command prints it). Tables and figures go through
`reports.py`, the one writer of both.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prosocial_jax.evaluation.reports import (
    markdown_table,
    new_figure,
    number,
    percent,
    save_figure,
)
from prosocial_jax.files import atomic_open

MAX_PAIRS = 10  # attribute pairs drawn per sweep: 5 attributes give exactly 10
FRONT, DOMINATED = "tab:blue", "tab:gray"


# ------------------------------------------------------------------------------- formatting
def _escape(text: str) -> str:
    # A "|" in a setting or judge name would split a Markdown table cell.
    return str(text).replace("|", "\\|")


def _rate_cell(value: float | None, interval: Sequence[float] | None, count: int | None) -> str:
    if value is None:
        return ""
    cell = percent(value)
    if interval is not None:
        cell += f" [{percent(interval[0])}, {percent(interval[1])}]"
    return cell if count is None else f"{cell} (n={count})"


def _preference_label(preference: dict[str, float]) -> str:
    return ", ".join(f"{attribute}={weight:g}" for attribute, weight in preference.items())


def _attributes(metrics: dict[str, Any]) -> list[str]:
    """Every attribute any setting has a mean score for, in order of first appearance."""
    order: dict[str, None] = {}
    for setting in metrics["settings"].values():
        order.update(dict.fromkeys(setting["mean_scores"]))
    return list(order)


def summary_table(metrics: dict[str, Any]) -> str:
    """One row per setting: n, leakage, over-refusal and fluent refusals with their intervals
    and counts, the degenerate rate, the share of refusals that are loops, and the mean of
    every attribute."""
    attributes = _attributes(metrics)
    header = ["setting", "n", "leakage [CI]", "over-refusal [CI]", "fluent refusals [CI]",
              "degenerate", "refusals that are loops", *(f"mean {a}" for a in attributes)]
    rows = []
    for name, s in metrics["settings"].items():
        rows.append([
            _escape(name), str(s["n"]),
            _rate_cell(s["leakage"], s["leakage_ci"], s["leakage_n"]),
            _rate_cell(s["over_refusal"], s["over_refusal_ci"], s["over_refusal_n"]),
            _rate_cell(s["fluent_refusal"], s["fluent_refusal_ci"], s["fluent_refusal_n"]),
            _rate_cell(s["degenerate"], None, s["degenerate_n"]),
            _rate_cell(s["refusals_degenerate"], None, s["refusals_degenerate_n"]),
            *(number(s["mean_scores"].get(a)) for a in attributes)])
    return markdown_table(header, rows)


def _sweep_table(sweeps: dict[str, Any]) -> str:
    return markdown_table(
        ["sweep", "points", "attributes", "MIP", "hypervolume", "Pareto coverage"],
        [[_escape(name), str(len(sweep["points"])), ", ".join(sweep["attributes"]),
          number(sweep["mip"]), f"{sweep['hypervolume']:.4g}", percent(sweep["pareto_coverage"])]
         for name, sweep in sweeps.items()])


def _points_table(sweep: dict[str, Any]) -> str:
    return markdown_table(
        ["preference", "n", *sweep["attributes"], "on the Pareto front"],
        [[_escape(_preference_label(p["preference"])), str(p["n"]),
          *(number(p["scores"][a]) for a in sweep["attributes"]), "yes" if p["pareto"] else "no"]
         for p in sweep["points"]])


def _win_rate_table(win_rates: dict[str, Any]) -> str:
    return markdown_table(
        ["setting", "attribute", "win", "tie", "loss", "win rate"],
        [[_escape(setting), attribute, str(c["win"]), str(c["tie"]), str(c["loss"]),
          percent(c["win_rate"])]
         for setting, per_attribute in win_rates.items()
         for attribute, c in per_attribute.items()])


def _per_judge_table(per_judge: dict[str, dict[str, Any]]) -> str:
    return markdown_table(
        ["judge", "setting", "leakage [CI]", "over-refusal [CI]", "degenerate"],
        [[_escape(judge), _escape(name),
          _rate_cell(s["leakage"], s["leakage_ci"], s["leakage_n"]),
          _rate_cell(s["over_refusal"], s["over_refusal_ci"], s["over_refusal_n"]),
          _rate_cell(s["degenerate"], None, s["degenerate_n"])]
         for judge, judge_metrics in per_judge.items()
         for name, s in judge_metrics["settings"].items()])


def _agreement_table(agreement: dict[str, dict[str, Any]]) -> str:
    return markdown_table(
        ["judge", "label", "n", "accuracy", "kappa"],
        [[_escape(judge), label, str(a["n"]), percent(a["accuracy"]), number(a["kappa"])]
         for judge, labels in agreement.items() for label, a in labels.items()])


def _rubric_format_table(formats: dict[str, dict[str, Any]]) -> str:
    return markdown_table(
        ["judge", "scores", "probability on a score token: median [min, max]",
         "score mean", "score sd"],
        [[_escape(judge), str(f["scores"]),
          f"{percent(f['mass_median'])} [{percent(f['mass_min'])}, {percent(f['mass_max'])}]",
          number(f["score_mean"], 2), number(f["score_sd"], 2)]
         for judge, f in formats.items()])


def _how_to_read(confidence: float) -> str:
    return (
        "**Leakage** is the share of answers to harmful prompts that the judges marked unsafe "
        "(lower is safer). **Over-refusal** is the share of benign prompts the model refused "
        "(lower is more helpful). **Degenerate** is the share of answers that are loops or "
        "gibberish, and **refusals that are loops** is, among answers counted as refusals, the "
        "share that are degenerate: a broken model can look safe because its loops read as "
        "refusals. **Mean scores** are the judges' attribute scores averaged over the answers "
        "that have them (higher is better). Brackets are "
        f"{100 * confidence:g}% bootstrap intervals (percentile method, answers resampled) and "
        "n is the number of answers a rate is over; a rate only counts answers that carry its "
        "label, and an empty cell means there was nothing to measure. A **sweep** is one "
        "setting decoded under several preference vectors (its points): **MIP** is the mean "
        "over points of the preference-weighted scores, each attribute rescaled to 0-1 across "
        "the points (higher means the scores follow the preferences); **hypervolume** is the "
        "volume of score space the points dominate above the worst value of each attribute "
        "(higher means a wider, better trade-off), in the scores' own units; **Pareto "
        "coverage** is the share of points no other point beats on every attribute. A **win "
        "rate** is, per attribute, the share of prompts both settings answered on which a "
        "setting's score is higher than the reference's (ties counted apart)."
    )


# ---------------------------------------------------------------------------------- figures
def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "sweep"


def _error_bars(values: list[float], intervals: list[Sequence[float]]) -> np.ndarray:
    # Bar lengths below and above each value; max(0, ...) guards a value at its interval's edge.
    return np.array([[max(0.0, v - lo) for v, (lo, _) in zip(values, intervals)],
                     [max(0.0, hi - v) for v, (_, hi) in zip(values, intervals)]])


def _draw_leakage_vs_over_refusal(settings: dict[str, Any], path: Path) -> str | None:
    shown = {name: s for name, s in settings.items()
             if s["leakage"] is not None and s["over_refusal"] is not None}
    if not shown:
        return "no setting has both a leakage and an over-refusal rate"
    fig = new_figure(6.4, 5.2)
    ax = fig.subplots()
    for name, s in shown.items():
        x, y = s["over_refusal"], s["leakage"]
        xerr = None if s["over_refusal_ci"] is None else _error_bars([x], [s["over_refusal_ci"]])
        yerr = None if s["leakage_ci"] is None else _error_bars([y], [s["leakage_ci"]])
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", capsize=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(xlabel="over-refusal (benign prompts refused)",
           ylabel="leakage (harmful answers judged unsafe)", xlim=(-0.03, 1.03),
           ylim=(-0.03, 1.03), title="Leakage vs over-refusal (bottom left is best)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return None


def _front_2d(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points of (x, y) that no other dominates (both maximised), sorted by x."""
    import moocore

    on_front = moocore.is_nondominated(np.column_stack([x, y]), maximise=True, keep_weakly=True)
    order = np.argsort(x[on_front], kind="stable")
    return x[on_front][order], y[on_front][order]


def _weights_label(preference: dict[str, float], attributes: Sequence[str]) -> str:
    return "/".join(f"{preference.get(a, 0):g}" for a in attributes)


def _draw_pareto(sweep_name: str, sweep: dict[str, Any], path: Path) -> str | None:
    attributes = sweep["attributes"]
    pairs = list(itertools.combinations(attributes, 2))[:MAX_PAIRS]
    if not pairs:
        return f"sweep {sweep_name!r} has a single attribute, so there is no pair to plot"
    columns = min(3, len(pairs))
    rows = -(-len(pairs) // columns)
    fig = new_figure(4.4 * columns, 3.9 * rows + 0.9)
    # Constrained layout makes room for the title and the legend below the panels.
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    points = sweep["points"]
    on_front = np.array([p["pareto"] for p in points])
    for ax, (a, b) in zip(axes, pairs):
        x = np.array([p["scores"][a] for p in points])
        y = np.array([p["scores"][b] for p in points])
        ax.scatter(x[~on_front], y[~on_front], color=DOMINATED, label="dominated", zorder=3)
        ax.scatter(x[on_front], y[on_front], color=FRONT,
                   label="on the Pareto front (all attributes)", zorder=3)
        # The staircase of this pair's own front: a point's 2-D projection can be dominated
        # even when the point is on the front of all attributes.
        front_x, front_y = _front_2d(x, y)
        ax.step(front_x, front_y, where="pre", color=FRONT, lw=1, alpha=0.6,
                label="front of this pair")
        for point, px, py in zip(points, x, y):
            ax.annotate(_weights_label(point["preference"], attributes), (px, py),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.margins(0.15)  # room for the labels of the outermost points
        ax.set(xlabel=a, ylabel=b)
        ax.grid(alpha=0.3)
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle(f"Sweep {sweep_name}: mean scores per preference (higher is better)\n"
                 f"points labelled with the weights of {'/'.join(attributes)}", fontsize=10)
    save_figure(fig, path)
    return None


def _draw_sweeps(sweeps: dict[str, Any], path: Path) -> str | None:
    if not sweeps:
        return "no setting has rows with a preference vector, so there is no sweep"
    names = list(sweeps)
    fig = new_figure(max(8.0, 1.6 * len(names) + 4), 4.2)
    ax_mip, ax_hv = fig.subplots(1, 2)
    positions = np.arange(len(names))
    for ax, key, color, title in (
            (ax_mip, "mip", "tab:blue", "MIP\n(higher: scores follow the preferences)"),
            (ax_hv, "hypervolume", "tab:green", "Hypervolume\n(higher: a wider trade-off)")):
        values = [sweeps[n][key] for n in names]
        bars = ax.bar(positions, values, width=0.6, color=color)
        ax.bar_label(bars, [f"{v:.3g}" for v in values], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(positions, names, rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.8, len(names) - 0.2)
        ax.grid(axis="y", alpha=0.3)
    ax_mip.set(ylabel="MIP", ylim=(0, 1.05))
    ax_hv.set(ylabel="hypervolume (scores' units)")
    fig.tight_layout()
    save_figure(fig, path)
    return None


def _draw_win_rates(win_rates: dict[str, Any], reference: str | None, path: Path) -> str | None:
    bars = [(f"{setting} · {attribute}", c) for setting, per_attribute in win_rates.items()
            for attribute, c in per_attribute.items() if c["win"] + c["tie"] + c["loss"] > 0]
    if not bars:
        return ("no reference setting was given" if reference is None
                else f"no setting shares a scored prompt with the reference {reference!r}")
    fig = new_figure(8.0, 1.2 + 0.32 * len(bars))
    ax = fig.subplots()
    positions = np.arange(len(bars))[::-1]  # first bar on top
    left = np.zeros(len(bars))
    for outcome, color in (("win", "tab:green"), ("tie", "tab:gray"), ("loss", "tab:red")):
        shares = np.array([c[outcome] / (c["win"] + c["tie"] + c["loss"]) for _, c in bars])
        ax.barh(positions, shares, left=left, color=color, label=outcome)
        left += shares
    ax.set_yticks(positions, [label for label, _ in bars], fontsize=7)
    ax.axvline(0.5, color="black", lw=0.6, ls=":")
    ax.set(xlim=(0, 1), xlabel="share of prompts both answered",
           title=f"Per-prompt scores against {reference}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    return None


def _draw_degeneracy(settings: dict[str, Any], path: Path) -> str | None:
    if all(s["degenerate"] is None and s["refusals_degenerate"] is None
           for s in settings.values()):
        return "no answer carries a degenerate label"
    names = list(settings)
    positions = np.arange(len(names))
    width = 0.38
    fig = new_figure(max(6.0, 1.1 * len(names) + 2), 4.2)
    ax = fig.subplots()
    for offset, key, label, color in (
            (-width / 2, "degenerate", "degenerate answers", "tab:purple"),
            (width / 2, "refusals_degenerate", "refusals that are degenerate", "tab:orange")):
        values = [settings[n][key] or 0.0 for n in names]
        intervals = [settings[n][f"{key}_ci"] or (v, v) for n, v in zip(names, values)]
        ax.bar(positions + offset, values, width, yerr=_error_bars(values, intervals),
               capsize=3, color=color, label=label)
        for position, name in zip(positions, names):
            if settings[name][key] is None:  # a zero-height bar would read as "none found"
                ax.annotate("no data", (position + offset, 0.01), ha="center", fontsize=6,
                            rotation=90)
    ax.set_xticks(positions, names, rotation=20, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.02), ylabel="share", title="Degenerate answers (loops, gibberish)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return None


# ----------------------------------------------------------------------------------- report
def _figure(file_name: str, caption: str, skipped: str | None) -> str:
    if skipped is not None:
        return f"*{caption}: not drawn, because {skipped}.*"
    return f"![{caption}]({file_name})"


def write_report_files(folder: Path, metrics: dict[str, Any], *,
                       per_judge: dict[str, dict[str, Any]] | None = None,
                       agreement: dict[str, dict[str, Any]] | None = None,
                       title: str = "Evaluation") -> list[str]:
    """`report.md` and the figures (see the module docstring) in the existing `folder`;
    returns the names of the files written, `report.md` first."""
    folder = Path(folder)
    settings = metrics["settings"]
    # A setting decoded under one preference only is no sweep to draw (its MIP is 0 and its
    # hypervolume empty by definition); it is named, not plotted.
    sweeps = {k: v for k, v in metrics["sweeps"].items() if len(v["points"]) > 1}
    single = [k for k, v in metrics["sweeps"].items() if len(v["points"]) == 1]
    reference = metrics.get("reference")
    written: list[str] = []

    def figure(file_name: str, caption: str, draw, *args) -> str:
        skipped = draw(*args, folder / file_name)
        if skipped is None:
            written.append(file_name)
        return _figure(file_name, caption, skipped)

    lines = [f"# {title}", "", "## How to read this", "",
             _how_to_read(metrics.get("confidence", 0.95)), "",
             "## Summary", "", summary_table(metrics), "",
             figure("leakage_vs_over_refusal.png", "Leakage vs over-refusal",
                    _draw_leakage_vs_over_refusal, settings), "",
             figure("degeneracy.png", "Degenerate answers", _draw_degeneracy, settings), "",
             "## Preference sweeps", ""]
    if sweeps:
        lines += [_sweep_table(sweeps), ""]
    else:
        lines += ["No setting has rows with more than one preference vector.", ""]
    if single:
        lines += ["Decoded under a single preference (no sweep): "
                  + ", ".join(_escape(name) for name in single) + ".", ""]
    lines += [figure("sweeps.png", "MIP and hypervolume per sweep", _draw_sweeps, sweeps), ""]
    used_names: set[str] = set()
    for name, sweep in sweeps.items():
        file_name = f"pareto_{_safe_name(name)}.png"
        # Two sweep names can clean up to one file name ("a b", "a/b"): number the later ones.
        for suffix in itertools.count(2):
            if file_name not in used_names:
                break
            file_name = f"pareto_{_safe_name(name)}_{suffix}.png"
        used_names.add(file_name)
        lines += [f"### Sweep {_escape(name)}", "", _points_table(sweep), "",
                  figure(file_name, f"Pareto front of sweep {name}", _draw_pareto, name, sweep),
                  ""]

    lines += ["## Win rates" + ("" if reference is None else f" against {_escape(reference)}"),
              ""]
    if metrics["win_rates"]:
        lines += [_win_rate_table(metrics["win_rates"]), ""]
    else:
        lines += ["No reference setting was given." if reference is None
                  else "There is no other setting to compare with the reference.", ""]
    lines += [figure("win_rates.png", "Win, tie and loss shares against the reference",
                     _draw_win_rates, metrics["win_rates"], reference), ""]
    pairwise = metrics.get("pairwise_win_rates")
    if pairwise:  # a rubric judge's head-to-head verdicts (evaluate --pairwise)
        lines += [f"### Head to head against {_escape(reference)} (rubric judge, pairwise)", "",
                  "The judge saw both answers to each prompt, in an order drawn at random, and "
                  "said which is better or that they are equally good.", "",
                  _win_rate_table(pairwise), "",
                  figure("pairwise_win_rates.png", "Head-to-head verdicts against the reference",
                         _draw_win_rates, pairwise, reference), ""]

    lines += ["## By judge", "",
              _per_judge_table(per_judge) if per_judge else "No per-judge metrics were given.",
              "", "## Judge agreement", "",
              _agreement_table(agreement) if agreement
              else "No judge agreement was measured.", ""]
    if metrics.get("rubric_format"):
        lines += ["How well each rubric judge kept to the answer format (probability on a valid "
                  "1-10 score token; the scores' mean and spread):", "",
                  _rubric_format_table(metrics["rubric_format"]), ""]
    with atomic_open(folder / "report.md") as handle:
        handle.write("\n".join(lines))
    return ["report.md", *written]
