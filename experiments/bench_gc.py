"""Time the Python garbage collector inside the train loop: the pauses that `jinject.trainer` avoids by
freezing the long-lived heap before its loop.

    python experiments/bench_gc.py            # the loop as jinject runs it
    python experiments/bench_gc.py --no-freeze

A tiny student (steps of about a millisecond) makes pauses visible that a real step would hide on a CPU
but not on a GPU, where a gpt2-large step takes 35-55 ms. Only collections after the fifth step are
counted, so setup and the first compile do not enter.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--no-freeze", action="store_true", help="run the loop without gc.freeze()")
    args = parser.parse_args()

    import tiny

    from jinject.rundir import read_metrics
    from jinject.trainer import train

    pauses: list[tuple[int, float]] = []
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(on_gc)
    config = tiny.config(steps=args.steps, checkpoint_every=10**6, log_every=50)
    unfrozen = mock.patch("gc.freeze", lambda: None) if args.no_freeze else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as out, unfrozen:
        train(config, out, components=tiny.components(), progress=False,
              on_step=lambda done, _: pauses.clear() if done == 5 else None)
        steps = [r["time"] for r in read_metrics(Path(out) / "metrics.jsonl")[0]][5:]
    print(f"{'no freeze' if args.no_freeze else 'frozen heap'}: {len(steps)} steps, "
          f"median {1e3 * statistics.median(steps):.2f} ms, total {sum(steps):.3f} s")
    for generation in (0, 1, 2):
        times = [t for g, t in pauses if g == generation]
        if times:
            print(f"  generation {generation}: {len(times)} collections, {sum(times):.3f} s in all, "
                  f"longest {1e3 * max(times):.1f} ms")


if __name__ == "__main__":
    main()
