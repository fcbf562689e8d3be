"""Throughput of the `cpu` preset on a small CPU machine: one job on every core, or one single-threaded job per core.

    python experiments/bench_cpu_jobs.py                    # shuffle-dyck injected, 40 steps per job
    python experiments/bench_cpu_jobs.py --variant baseline --steps 30

XLA splits each matmul of a 135M-parameter model over the cores, which scales imperfectly on two cores;
independent runs (the preset has 18) can instead take a core each. Both ways train the same preset
configuration for `--steps` steps in a fresh directory; the steady-state rate (steps after the first
`--skip`, from metrics.jsonl) is summed over the concurrent jobs. Prints seconds per step and the
aggregate steps per second of each way, and their ratio, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import SINGLE_THREAD_XLA  # noqa: E402  (the flags `compare.py --jobs` runs with)

JOB = """
import json, sys
sys.path.insert(0, {here!r})
from compare import load_preset, make_config
from jinject.trainer import train
config = make_config(load_preset("cpu"), {task!r}, {variant!r}, 0, steps={steps})
config = type(config)(**{{**config.__dict__, "checkpoint_every": {steps}, "log_every": 1,
                          "adapter_warmup_steps": min(config.adapter_warmup_steps, {steps} // 2)}})
train(config, {out!r}, progress=False)
"""


def steady_seconds_per_step(out: Path, skip: int) -> float:
    from jinject.rundir import read_metrics

    recs, _ = read_metrics(out / "metrics.jsonl")
    times = [r["time"] for r in recs if r["step"] > skip]
    return sum(times) / len(times)


def run_jobs(n_jobs: int, args: argparse.Namespace, root: Path) -> list[float]:
    procs, outs = [], []
    for j in range(n_jobs):
        out = root / f"jobs{n_jobs}-{j}"
        env = dict(os.environ)
        cmd = [sys.executable, "-c", JOB.format(here=str(HERE), task=args.task, variant=args.variant,
                                                steps=args.steps, out=str(out))]
        if n_jobs > 1:  # one core each, one XLA thread each
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}".strip()
            cmd = ["taskset", "-c", str(j % os.cpu_count()), *cmd]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
        outs.append(out)
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a benchmark job failed:\n{err[-3000:]}")
    return [steady_seconds_per_step(o, args.skip) for o in outs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="shuffle-dyck")
    parser.add_argument("--variant", default="injected", choices=["injected", "baseline"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=10, help="steps left out of the rate (compile, warm-up)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="concurrent single-core jobs")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} cores; {args.task} {args.variant}, {args.steps} steps per job "
          f"(rate over steps > {args.skip})", flush=True)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n_jobs in (1, args.jobs):
            t0 = time.perf_counter()
            sps = run_jobs(n_jobs, args, Path(tmp))
            rates[n_jobs] = sum(1 / s for s in sps)
            print(f"{n_jobs} job(s){' on every core' if n_jobs == 1 else ', one core and one XLA thread each'}: "
                  f"{', '.join(f'{s:.2f}' for s in sps)} s/step -> {rates[n_jobs]:.3f} steps/s in all "
                  f"({time.perf_counter() - t0:.0f} s wall)", flush=True)
    print(f"throughput ratio ({args.jobs} single-core jobs / 1 job on every core): "
          f"{rates[args.jobs] / rates[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
