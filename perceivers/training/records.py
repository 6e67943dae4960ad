"""Run records: metrics as CSV (and TensorBoard event files when ``tensorboard`` is installed).

``RUN/metrics.csv`` has one row per logged training step (``step, epoch, loss, lr, grad_norm, examples_per_s,
elapsed_s, skipped`` + the task's own training metrics); ``RUN/eval.csv`` one row per evaluation. The columns
of a file are fixed by its first row; on resume, rows after the resumed step are dropped. An ``OSError`` while
writing them (disk full, read-only folder) is a one-line :class:`~perceivers.core.files.FileSystemError`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from perceivers.core.files import reported_os_errors


class CsvLog:
    """Append-only CSV whose header is the keys of the first row written (later unknown keys are an error)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] | None = None
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), None)
            self.columns = header or None

    def truncate_after(self, step: int) -> None:
        """Drop rows whose ``step`` is beyond ``step`` (they were logged after the checkpoint we resume from)."""
        with reported_os_errors("rewrite", self.path):
            self._truncate_after(step)

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        with open(self.path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if not rows or "step" not in rows[0]:
            return
        col = rows[0].index("step")
        kept = [rows[0]] + [r for r in rows[1:] if len(r) > col and r[col] and int(float(r[col])) <= step]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(kept)
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        new = self.columns is None
        if new:
            self.columns = list(row)
        unknown = set(row) - set(self.columns)  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"{self.path}: metrics {sorted(unknown)} were not in the first row {self.columns}")
        with reported_os_errors("write", self.path), open(self.path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)  # type: ignore[arg-type]
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


class RunRecords:
    """``metrics.csv`` + ``eval.csv`` of a run folder, mirrored to TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, *, tensorboard: bool = True) -> None:
        self.train = CsvLog(out_dir / "metrics.csv")
        self.eval = CsvLog(out_dir / "eval.csv")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None  # type: ignore[assignment, misc]
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def reset(self) -> None:
        for log in (self.train, self.eval):
            if log.path.is_file():
                with reported_os_errors("remove", log.path):
                    log.path.unlink()
            log.columns = None

    def truncate_after(self, step: int) -> None:
        self.train.truncate_after(step)
        self.eval.truncate_after(step)

    def log_train(self, row: dict[str, Any]) -> None:
        self.train.write(row)
        self._tb("train", row)

    def log_eval(self, row: dict[str, Any]) -> None:
        self.eval.write(row)
        self._tb("eval", row)

    def _tb(self, prefix: str, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
