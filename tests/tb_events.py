"""Reads TensorBoard event files back for the tests (no tensorboard package needed: tensorboardX's protos)."""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from pathlib import Path

import pytest


def read_events(logdir: Path) -> list:
    """Every `Event` proto in `logdir`'s event files, in TensorBoard's order (file names, then records).

    Event files are TFRecords: u64 length, u32 crc, payload, u32 crc.
    """
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def read_tensorboard(logdir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} as TensorBoard shows them: a SessionLog START at step s (what `purge_step`
    writes on resume) hides the events read so far at steps >= s."""
    from tensorboardX.proto.event_pb2 import SessionLog

    scalars: dict[str, dict[int, float]] = defaultdict(dict)
    for event in read_events(logdir):
        if event.HasField("session_log") and event.session_log.status == SessionLog.START:
            for series in scalars.values():
                for step in [s for s in series if s >= event.step]:
                    del series[step]
        for value in event.summary.value:
            scalars[value.tag][event.step] = value.simple_value
    return dict(scalars)


def metrics_as_tensorboard(run_dir: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl in TensorBoard's naming: align_per_layer[i] -> align/layer_i."""
    expected: dict[str, dict[int, float]] = defaultdict(dict)
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for key, value in rec.items():
            if key == "step":
                continue
            if isinstance(value, list):
                for i, v in enumerate(value):
                    expected[f"{key.removesuffix('_per_layer')}/layer_{i}"][rec["step"]] = v
            else:
                expected[key][rec["step"]] = value
    return dict(expected)


def assert_same_scalars(got: dict, expected: dict) -> None:
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for tag, series in expected.items():
        assert sorted(got[tag]) == sorted(series), tag
        for step, value in series.items():
            assert got[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-7), (tag, step)  # float32 in events
