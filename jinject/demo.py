"""`make demo`: inject shuffle-dyck into the offline smollm2-135m on a 2-core CPU in under 20 minutes.

The settings were chosen by measuring on a 2-core CPU: inputs of up to 12 brackets keep the step near
2 s, learning rates far above the original's 1e-6 / 1e-4 (with warm-up, cosine decay and clipping) let
300 steps show what 20k steps at the original rates show on a GPU, and the evaluation sizes keep the
whole demo, evaluation included, near 15 minutes. The objective settings (framed prompt with the host's
BOS, two student blocks per teacher layer, adapter-only warm-up, marker weight) are the `cpu` preset's,
chosen by the shuffle-dyck ablation (docs/method.md, results/ablation).
"""

from __future__ import annotations

import argparse
import time

from jinject.config import TrainConfig

DEMO = TrainConfig(
    task="shuffle-dyck",
    model="smollm2-135m",
    task_options={"max_len": 12, "max_input_len": 12, "ood_max_len": 40, "frame": True, "bos": True},
    steps=300,
    batch_size=8,
    text_batch_size=4,
    text_seq_len=32,
    n_train=4000,
    layer_stride=2,
    lr=1e-4,
    adapter_lr=1e-3,
    adapter_warmup_steps=30,
    marker_weight=5.0,
    warmup_steps=10,
    schedule="cosine",
    grad_clip=1.0,
    checkpoint_every=50,
    log_every=5,
)

# the cpu preset's evaluation: the demo prints what results/ablation reports for its seed 0
DEMO_EVAL = dict(n_examples=200, n_decode=100, n_causal=200, n_text_windows=32, text_seq_len=64,
                 noise_norms=(0.0, 5.0, 10.0, 30.0))


def demo_config(steps: int = DEMO.steps) -> TrainConfig:
    """The demo's settings for `steps` steps; the adapter-only warm-up keeps its share of the steps."""
    warmup = round(DEMO.adapter_warmup_steps * steps / DEMO.steps)
    return TrainConfig(**{**DEMO.__dict__, "steps": steps, "adapter_warmup_steps": warmup})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--steps", type=int, default=DEMO.steps)
    args = parser.parse_args(argv)

    from jinject.compilation import enable_compilation_cache
    from jinject.evaluate import evaluate_run, format_table, heldout_metrics
    from jinject.trainer import train

    enable_compilation_cache()

    config = demo_config(args.steps)
    t0 = time.perf_counter()
    print(f"jinject demo: injecting {config.task} into {config.model} for {config.steps} steps -> {args.out}")
    run = train(config, args.out)
    print(f"trained in {time.perf_counter() - t0:.0f} s (including model load and compile)")
    m = heldout_metrics(run, n=128)
    per_layer = " ".join(f"{x:.3f}" for x in m["align_per_layer"])
    print(f"held-out {config.task} ({m['n_examples']} examples, teacher-forced): answer-token accuracy "
          f"{m['answer_acc']:.3f}, exact {m['exact_acc']:.3f}, task loss {m['task']:.3f}, KL {m['kl']:.4f}")
    print(f"alignment (1 - cos) per teacher layer: {per_layer}  (sum {m['align']:.3f})")
    results = evaluate_run(run, out=args.out, **DEMO_EVAL)
    print(format_table(results))
    print(f"demo done in {time.perf_counter() - t0:.0f} s; next: jinject decode {args.out} \"<prompt>\"")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
