"""The evaluation of a trained run: the four measurements -> eval.json, and the table `jinject eval` prints.

Accuracy (`accuracy`) on the test split and every OOD split; language retention (`language`); decoding
accuracy through the adapter (`probing`); the causal tests (`causal`: noise; `interchange`: the donor's answer
subspace). A baseline run has no adapter: its decoding, causal and interchange entries are `None` (absent,
not zero). docs/method.md, Evaluation, says why each.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinject.data import PieceEncoder, encode_examples, load_corpus, split_corpus
from jinject.evaluate.accuracy import generation_accuracy
from jinject.evaluate.causal import causal_test
from jinject.evaluate.config import EvalConfig
from jinject.evaluate.interchange import PARTS, SITES, interchange_test
from jinject.evaluate.language import retention, text_windows
from jinject.evaluate.probing import decoding_accuracy

if TYPE_CHECKING:
    from jinject.tasks import Example, Task
    from jinject.teacher import Teacher
    from jinject.trainer import Run


def fits_teacher(example: Example, teacher: Teacher) -> bool:
    """Whether the teacher can run the example with its answer (length and vocabulary: an OOD split may bring
    symbols the teacher never had)."""
    return teacher.misfit(example) is None


def split_examples(task: Task, split: str, n: int, seed: int, teacher: Teacher | None) -> list[Example]:
    """`task.examples`, with train/test drawn for the run's teacher size (as training drew them)."""
    if teacher is not None and split in ("train", "test"):
        return task.examples(split, n, seed, max_seq_len=teacher.max_seq_len)
    return task.examples(split, n, seed)


@contextmanager
def timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Wall seconds of one stage (its compilation included), so a slow evaluation says where its time went."""
    start = time.perf_counter()
    yield
    seconds[stage] = round(time.perf_counter() - start, 3)


def evaluate_run(
    run: Run,
    settings: EvalConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """All four measurements for a `jinject.trainer.Run`; writes `out/eval.json` when `out` is given.

    `settings` (default `EvalConfig()`) says what to measure on; keyword `overrides` replace its fields,
    e.g. `evaluate_run(run, n_examples=200, noise_norms=(0.0, 10.0))`. `progress` gets one line per stage.
    """
    s = dataclasses.replace(settings or EvalConfig(), **overrides)
    say = progress or (lambda _msg: None)
    config, task, teacher, tokenizer = run.config, run.task, run.teacher, run.tokenizer
    encoder = PieceEncoder(tokenizer)
    splits = [x for x in task.splits if x != "train"] if s.splits is None else list(s.splits)
    results: dict[str, Any] = {
        "run": {"task": config.task, "model": config.model, "baseline": bool(config.baseline),
                "variant": config.variant, "seed": config.seed, "step": int(run.step)},
        "settings": {"n_examples": s.n_examples, "n_decode": s.n_decode, "n_text_windows": s.n_text_windows,
                     "text_seq_len": s.text_seq_len, "eval_seed": s.seed},
    }

    seconds: dict[str, float] = {}
    accuracy = {}
    test_examples = None
    for split in splits:
        say(f"accuracy on {split}")
        with timed(seconds, f"accuracy/{split}"):
            examples = split_examples(task, split, s.n_examples, s.seed, teacher)
            if split == "test":
                test_examples = examples
            accuracy[split] = generation_accuracy(run.model, encoder, examples, batch_size=s.batch_size)
    results["accuracy"] = accuracy

    if run.original is not None:
        say("language retention")
        with timed(seconds, "retention"):
            heldout = split_corpus(load_corpus(config.corpus))[1]
            windows = text_windows(heldout, tokenizer, s.text_seq_len, s.n_text_windows)
            results["retention"] = retention(run.original, run.model, windows, batch_size=min(s.batch_size, 8))
    else:
        results["retention"] = None

    if config.baseline or teacher is None:
        results["decoding"] = None
        results["causal"] = None
        results["interchange"] = None
    else:
        if test_examples is None:
            test_examples = split_examples(task, "test", max(s.n_examples, s.n_decode), s.seed, teacher)
        fitting = [e for e in test_examples if fits_teacher(e, teacher)]
        if not fitting:
            raise ValueError(f"no test example fits the teacher's max_seq_len={teacher.max_seq_len}")
        index = run.student_index
        say("decoding accuracy")
        with timed(seconds, "decoding"):
            dec_arrays = encode_examples(fitting[: s.n_decode], encoder, teacher)
            results["decoding"] = decoding_accuracy(run.model, teacher, run.adapter, index, dec_arrays,
                                                    batch_size=min(s.batch_size, 16))
            results["decoding"]["answer_var"] = teacher.answer_var
        say("causal test")
        with timed(seconds, "causal"):
            n_c = s.n_causal if s.n_causal is not None else s.n_examples
            causal_arrays = encode_examples(test_examples[:n_c], encoder, None)
            results["causal"] = causal_test(run.model, run.adapter, teacher.answer_dims, teacher.n_layers,
                                            run.intervene_at, causal_arrays, norms=s.noise_norms,
                                            relative=s.relative_noise, batch_size=s.batch_size, seed=s.seed)
        say("interchange test")
        with timed(seconds, "interchange"):
            results["interchange"] = interchange_test(run.model, run.adapter, teacher.answer_dims, teacher.n_layers,
                                                      run.intervene_at, causal_arrays, batch_size=s.batch_size,
                                                      seed=s.seed)
    results["seconds"] = seconds
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        from jinject.rundir import finite_or_none

        # standard JSON only: a NaN/inf measurement is written as null, never as a bare NaN
        (Path(out) / "eval.json").write_text(json.dumps(finite_or_none(results), indent=2, allow_nan=False) + "\n")
    return results


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(results: dict[str, Any]) -> str:
    """The human-readable report of `evaluate_run`'s dict (what `jinject eval` prints)."""
    r = results.get("run", {})
    kind = r.get("variant") or ("baseline" if r.get("baseline") else "injected")
    lines = [f"{r.get('task', '?')} on {r.get('model', '?')} ({kind}, seed {r.get('seed', '?')}, "
             f"step {r.get('step', '?')})", ""]
    lines.append("exact-match accuracy (greedy)")
    lines.append(f"  {'split':<24}{'n':>6}{'accuracy':>10}")
    for split, a in results.get("accuracy", {}).items():
        lines.append(f"  {split:<24}{a['n']:>6}{_fmt(a['accuracy']):>10}")
    ret = results.get("retention")
    lines.append("")
    if ret:
        lines.append(f"language retention (held-out text, {ret['n_tokens']} tokens)")
        lines.append(f"  perplexity original {ret['ppl_original']:.2f} -> trained {ret['ppl_trained']:.2f}   "
                     f"KL(original || trained) {ret['kl']:.4f} nats/token")
    else:
        lines.append("language retention: not measured (no original model)")
    dec = results.get("decoding")
    lines.append("")
    if dec is None:
        lines.append("decoding accuracy: n/a (baseline run: no adapter)")
    else:
        idx = dec["student_index"]
        lines.append(f"decoding accuracy through the adapter ({dec['n_examples']} test examples, "
                     f"{dec['n_positions']} positions; '-' = variable not yet computed by the teacher)")
        head = "".join(f"{f't{i}/s{s}':>9}" for i, s in enumerate(idx))
        marker = dec.get("marker", {})
        lines.append(f"  {'variable':<22}{'kind':<6}{head}{'mean':>8}{'written':>9}{'marker':>8}")
        for var, v in dec["variables"].items():
            cells = "".join(f"{_fmt(a):>9}" for a in v["per_layer"])
            at_marker = marker.get(var, {}).get("written")
            lines.append(f"  {var[:21]:<22}{v['kind'][:4]:<6}{cells}{_fmt(v['mean']):>8}{_fmt(v.get('written')):>9}"
                         f"{_fmt(at_marker):>8}")
        lines.append(f"  mean over variables: {_fmt(dec['mean'])}   (written: at the layer that writes the variable; "
                     "marker: the same at the last prompt token only)")
    cau = results.get("causal")
    lines.append("")
    if cau is None:
        lines.append("causal test: n/a (baseline run: no answer subspace)")
    else:
        lines.append(f"causal test: noise added at student hidden state {cau['student_index']} inside a "
                     f"{cau['dim']}-dim subspace ({cau['n']} test examples, teacher-forced exact match)")
        lines.append(f"  {'noise norm':>10}{'answer subspace':>18}{'random subspace':>18}")
        for n, a, b in zip(cau["norms"], cau["answer_subspace"], cau["random_subspace"], strict=True):
            lines.append(f"  {n:>10g}{_fmt(a):>18}{_fmt(b):>18}")
        rel = cau.get("relative")
        if rel:
            lines.append(f"  relative to the median residual norm there ({rel['median_norm']:.1f}; mean "
                         f"{rel['mean_norm']:.1f}):")
            for f, n, a, b in zip(rel["fractions"], rel["norms"], rel["answer_subspace"], rel["random_subspace"],
                                  strict=True):
                lines.append(f"  {f:>5g} x = {n:<7.1f}{_fmt(a):>15}{_fmt(b):>18}")
    swap = results.get("interchange")
    if swap:
        pair = lambda x: f"{_fmt(x['donor'])} / {_fmt(x['receiver'])}"
        lines += ["", f"interchange test: part of a donor's hidden state {swap['student_index']} written into "
                      f"{swap['n_pairs']} test examples (donor: same prompt length, other answer)",
                  "  first answer token: the donor's / the example's own",
                  f"  {'swapped part':<20}{'every prompt position':<24}the marker only",
                  f"  {'none':<20}{pair(swap['clean'])}"]
        for part in PARTS:
            lines.append(f"  {part:<20}" + "".join(f"{pair(swap[site][part]):<24}" for site in SITES).rstrip())
        sizes = swap.get("norms")  # absent in an eval.json written before the sizes were reported
        if sizes:
            lines.append(f"  median swap at the marker: answer subspace {_fmt(sizes['answer_swap_at_marker'], 2)}, "
                         f"random {_fmt(sizes['random_swap_at_marker'], 2)} (median residual norm "
                         f"{sizes['median_residual']:.2f})")
    return "\n".join(lines)
