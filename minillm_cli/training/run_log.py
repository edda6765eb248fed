"""What a run records: ``metrics.jsonl`` and TensorBoard scalars (main process); training/display.py shows it."""

from __future__ import annotations

import json
from pathlib import Path


class RunLog:
    """Appends one JSON record per line to ``metrics.jsonl`` (and TensorBoard when installed), opened on first use."""

    def __init__(self, output_dir: Path, enabled: bool = True):
        self.output_dir, self.enabled = Path(output_dir), enabled
        self._metrics_file = None
        self._tensorboard = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            self._write(record)
        except Exception as exc:   # a full disk: the one line, not a traceback
            from .checkpoint import write_failure_error

            error = write_failure_error(exc, f"the metrics of step {record.get('step')} in {self.output_dir}", self.output_dir)
            if error is None:
                raise
            raise error from exc

    def _write(self, record: dict) -> None:
        if self._metrics_file is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._metrics_file = open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(self.output_dir / "tensorboard"))
            except ImportError:  # TensorBoard is optional (the dev extra installs it)
                self._tensorboard = None
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

