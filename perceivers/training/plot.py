"""``perceivers plot RUN_DIR``: the curves of a run's ``metrics.csv`` / ``eval.csv`` in one PNG (matplotlib).

A missing, unreadable or malformed CSV, an output path that cannot be written and a missing matplotlib are
:class:`~perceivers.core.errors.UserError` (``ConfigError`` where a file or path is at fault) naming the file; an
error while drawing is not.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from perceivers.core.errors import ConfigError, UserError

_NOT_CURVES = {"step", "epoch", "elapsed_s", "skipped"}


def _is_curve(name: str) -> bool:
    return name not in _NOT_CURVES and not name.startswith("num_")


def read_csv(path: Path) -> dict[str, list[float]]:
    """Columns of a records CSV as floats (empty cells become NaN); ``ConfigError`` (a ``ValueError``) naming the
    file if it is unreadable or malformed."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path} cannot be read as a CSV file: {exc}") from exc
    if not rows or "step" not in rows[0]:
        raise ConfigError(f"{path} has no header with a 'step' column: not a perceivers metrics file")
    header, columns = rows[0], {name: [] for name in rows[0]}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ConfigError(f"{path}, line {number}: {len(row)} fields, expected {len(header)}")
        for name, cell in zip(header, row):
            try:
                columns[name].append(float(cell) if cell != "" else math.nan)
            except ValueError:
                raise ConfigError(f"{path}, line {number}: {name}={cell!r} is not a number") from None
    return columns


def pyplot(needed_by: str = "perceivers plot") -> Any:
    """``matplotlib.pyplot`` on the Agg backend; a :class:`UserError` naming ``needed_by`` (the command or flag that
    draws) and the extra when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(f"{needed_by} needs matplotlib: pip install 'perceivers[plot]'") from None
    return plt


def check_output(path: str | Path, label: str = "--out") -> Path:
    """``path`` as a :class:`Path` whose folder exists and whose extension names an image format matplotlib
    writes; ``ConfigError`` naming ``label`` (the flag that gave the path) and the path otherwise."""
    from matplotlib.backend_bases import FigureCanvasBase

    target = Path(path)
    name = f"{label} {target}".strip()
    formats = FigureCanvasBase.get_supported_filetypes()
    if target.suffix.lstrip(".").lower() not in formats:
        raise ConfigError(f"{name}: cannot tell the image format from its extension; use one of "
                          f"{', '.join('.' + f for f in sorted(formats))}")
    if not target.parent.is_dir():
        raise ConfigError(f"{name}: the folder {target.parent} does not exist")
    return target


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw every training metric (loss, lr, grad norm, throughput, task metrics) and every evaluation metric
    against the step, one panel each, into ``out`` (default ``RUN_DIR/curves.png``); returns the path."""
    run = Path(run_dir)
    train_csv, eval_csv = run / "metrics.csv", run / "eval.csv"
    if not train_csv.is_file():
        raise ConfigError(f"{train_csv} is missing: RUN_DIR must be a folder written by `perceivers train`")
    plt = pyplot()
    target = check_output(out if out is not None else run / "curves.png", label="--out" if out is not None else "")
    panels: list[tuple[str, list[float], list[float], str]] = []
    train = read_csv(train_csv)
    panels += [(name, train["step"], values, "train") for name, values in train.items() if _is_curve(name)]
    if eval_csv.is_file():
        ev = read_csv(eval_csv)
        panels += [(name, ev["step"], values, "eval") for name, values in ev.items() if _is_curve(name)]
    if not train["step"]:
        raise ConfigError(f"{train_csv} has no rows yet")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, steps, values, kind) in zip(axes.flat, panels):
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3,
                color="tab:blue" if kind == "train" else "tab:orange")
        ax.set_title(f"{kind}: {name}", fontsize=10)
        ax.set_xlabel("step")
        if name in ("loss", "grad_norm") and all(v > 0 for v in values if not math.isnan(v)):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(run.resolve().name)
    fig.tight_layout()
    try:
        fig.savefig(target, dpi=110)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc}") from exc
    finally:
        plt.close(fig)
    return target
