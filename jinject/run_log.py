"""Where a training run reports while it runs, besides `metrics.jsonl` (which `train` always writes).

- On a terminal or in a notebook: a tqdm progress bar with the latest losses.
- Anywhere else (`nohup`, `tmux` piping into a file, a job scheduler): one plain line per `log_every` steps,
  because a bar's carriage-return updates turn a log file into one unreadable line.
- Optionally, TensorBoard event files with the same scalars as `metrics.jsonl` (`train(..., tensorboard=DIR)`,
  `jinject train --tensorboard DIR`; needs the `tensorboard` extra, i.e. tensorboardX).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

# The losses shown on the bar and on each log line, in this order (those a run has).
SUMMARY_KEYS = ("loss", "task", "kl", "align", "answer_acc")


class TensorBoardWriter:
    """Every numeric entry of a metrics record as a TensorBoard scalar; list entries one per layer.

    `align_per_layer` = [a0, a1, ...] becomes `align/layer_0`, `align/layer_1`, ... A resumed run redoes the
    steps after its checkpoint: `purge_step` (the first step this process logs) hides the older events at
    and after that step, so TensorBoard shows each step once, as `metrics.jsonl` does.
    """

    def __init__(self, logdir: str | Path, purge_step: int | None = None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise ImportError("TensorBoard logging needs tensorboardX: pip install 'jinject[tensorboard]'") from e
        self.logdir = Path(logdir)
        # tensorboardX names a file by the second it opened it (a restart within that second would overwrite
        # it); the first step in the name keeps every attempt's file, in order
        suffix = f".from{purge_step or 0:09d}"
        self._writer = SummaryWriter(str(self.logdir), purge_step=purge_step, filename_suffix=suffix)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key == "step":
                continue
            if isinstance(value, (list, tuple)):
                prefix = key.removesuffix("_per_layer")
                for i, v in enumerate(value):
                    self._writer.add_scalar(f"{prefix}/layer_{i}", float(v), step)
            elif isinstance(value, (int, float)):
                self._writer.add_scalar(key, float(value), step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def format_line(record: dict[str, Any], total: int, seconds_per_step: float) -> str:
    """One log line: `train step 20/300 | loss 1.23 | ... | 0.91 s/step | ETA 4m 12s`."""
    parts = [f"train step {record['step']}/{total}"]
    parts += [f"{k} {record[k]:.4g}" for k in SUMMARY_KEYS if k in record]
    parts.append(f"{seconds_per_step:.3g} s/step")
    parts.append(f"ETA {_duration(max(total - record['step'], 0) * seconds_per_step)}")
    return " | ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _renders_a_bar(stream: TextIO) -> bool:
    """A terminal, or a Jupyter/Colab cell (its stderr is no TTY, but it redraws a bar in place)."""
    if getattr(stream, "isatty", lambda: False)():
        return True
    return type(stream).__module__.split(".")[0] == "ipykernel"


class RunLog:
    """The run's live reporting: `step()` after every train step, `write(records)` when metrics are fetched.

    `records` are the dicts also appended to metrics.jsonl (`step`, the losses, `time` = seconds since the
    previous step was dispatched: steps run asynchronously, so only a sum over several steps is a duration).
    Log lines go out for the steps that are multiples of `log_every` (and the last step), whatever else made
    the loop fetch metrics (checkpoints), so a log file has exactly one line per interval.
    """

    def __init__(self, total: int, initial: int, log_every: int, *, progress: bool = True,
                 tensorboard: str | Path | None = None, stream: TextIO | None = None):
        self.total, self.log_every = total, max(int(log_every), 1)
        self.stream = stream if stream is not None else sys.stderr
        live = _renders_a_bar(self.stream)
        self._bar = None
        self._lines = progress and not live
        self._interval_seconds: list[float] = []
        self._tensorboard = TensorBoardWriter(tensorboard, purge_step=initial + 1) if tensorboard else None
        if progress and live:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, file=self.stream, dynamic_ncols=True, mininterval=0.5,
                             desc="train", unit="step")

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        for rec in records:
            if self._tensorboard is not None:
                self._tensorboard.write(rec)
            self._interval_seconds.append(float(rec.get("time", 0.0)))
            if self._lines and (rec["step"] % self.log_every == 0 or rec["step"] == self.total):
                per_step = sum(self._interval_seconds) / len(self._interval_seconds)
                print(format_line(rec, self.total, per_step), file=self.stream, flush=True)
                self._interval_seconds.clear()
        if self._tensorboard is not None and records:
            self._tensorboard.flush()
        if self._bar is not None and records:
            last = records[-1]
            self._bar.set_postfix({k: f"{last[k]:.4g}" for k in SUMMARY_KEYS if k in last}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
