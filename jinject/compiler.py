"""`compile_teacher`: a task's RASP program -> a `Teacher`, compiled with tracr (causal) or loaded from the
on-disk cache.

The stages follow tracr's compiler: canonicalize the program and infer its value sets (`_prepare`), hash
what determines the weights (`_fingerprint`), compile to tracr's model and trim it to plain per-layer
arrays (`_compile`, `_trim_params`). Zero padding that tracr adds (unused heads, unused MLP neurons, the
global key size) is trimmed per layer; the result equals tracr's own forward (tests check it).

Cache: `$JINJECT_CACHE` or `~/.cache/jinject/teachers`, one pickle per teacher (numpy params +
metadata, not tracr's graph), keyed by a fingerprint of the program (its structure and the truth
table of every Map / SequenceMap / Select over the inferred value sets), the vocabulary,
max_seq_len, mlp_exactness, the tracr version and the format version. The pickled metadata dict (its
keys, and `jinject.teacher.VarInfo` for the variables) is the cache format: keep it stable.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import math
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tracr.rasp import rasp

from jinject.tasks import Task, get_task, rasp_lib
from jinject.tasks.fit import check_teacher_size
from jinject.teacher import BOS, PAD, Build, Teacher, VarInfo

__all__ = ["compile_teacher", "teacher_fingerprint", "cache_dir", "FORMAT_VERSION"]

FORMAT_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("JINJECT_CACHE") or Path.home() / ".cache" / "jinject" / "teachers")


def _fingerprint(graph, program: rasp.SOp, vocab, max_seq_len: int, mlp_exactness: float) -> str:
    """Hash of everything that determines the compiled weights."""
    from tracr.compiler import nodes

    def vs(expr):
        return sorted(graph.nodes[expr.label][nodes.VALUE_SET], key=repr)

    def call(f, *a):
        try:
            return repr(f(*a))
        except ArithmeticError:
            return "<error>"

    h = hashlib.sha256()
    h.update(repr((FORMAT_VERSION, sorted(vocab), max_seq_len, float(mlp_exactness), True, BOS, PAD)).encode())
    h.update(importlib.metadata.version("tracr-pypi").encode())
    for e in rasp_lib.walk(program):
        row: list[Any] = [type(e).__name__, e.label, [c.label for c in e.children]]
        if isinstance(e, rasp.SOp):
            row.append(rasp.get_encoding(e).value)
        if isinstance(e, rasp.Map):
            row.append([(repr(x), call(e.f, x)) for x in vs(e.inner)])
        elif isinstance(e, rasp.SequenceMap):
            row.append([(repr(x), repr(y), call(e.f, x, y)) for x, y in itertools.product(vs(e.fst), vs(e.snd))])
        elif isinstance(e, rasp.Select):
            row.append([call(e.predicate, k, q) for k, q in itertools.product(vs(e.keys), vs(e.queries))])
        elif isinstance(e, rasp.Aggregate):
            row.append(repr(e.default))
        elif isinstance(e, rasp.Full):
            row.append(repr(e.fill))
        h.update(repr(row).encode())
    return h.hexdigest()


def _trim_params(model) -> tuple[dict, int]:
    """tracr's haiku params -> per-layer trimmed numpy arrays (exactly the same function)."""
    cfg = model.model_config
    p = {k: {kk: np.asarray(vv, dtype=np.float64) for kk, vv in v.items()} for k, v in model.params.items()}
    dense = int(sum(np.size(x) for v in p.values() for x in v.values()))
    for k, v in p.items():
        if "b" in v and np.any(v["b"] != 0):
            raise AssertionError(f"tracr model has a non-zero bias in {k}; jinject's forward assumes none")
    H, K = cfg.num_heads, cfg.key_size
    D = p["token_embed"]["embeddings"].shape[1]
    scale = 1.0 / math.sqrt(K)
    layers = []
    for i in range(cfg.num_layers):
        a = f"transformer/layer_{i}/attn"
        wq = p[f"{a}/query"]["w"].reshape(D, H, K) * scale
        wk = p[f"{a}/key"]["w"].reshape(D, H, K)
        wv = p[f"{a}/value"]["w"].reshape(D, H, K)
        wo = p[f"{a}/linear"]["w"].reshape(H, K, D)
        heads = [h for h in range(H) if np.any(wv[:, h]) and np.any(wo[h])]
        attn: dict[str, np.ndarray] = {}
        if heads:
            wq, wk, wv, wo = wq[:, heads], wk[:, heads], wv[:, heads], wo[heads]
            qk = [j for j in range(K) if np.any(wq[:, :, j]) and np.any(wk[:, :, j])]
            ov = [j for j in range(K) if np.any(wv[:, :, j]) and np.any(wo[:, j])]
            qk = qk or [0]
            attn = {"wq": wq[:, :, qk], "wk": wk[:, :, qk], "wv": wv[:, :, ov], "wo": wo[:, ov]}
        m = f"transformer/layer_{i}/mlp"
        w1, w2 = p[f"{m}/linear_1"]["w"], p[f"{m}/linear_2"]["w"]
        used = [j for j in range(w1.shape[1]) if np.any(w1[:, j]) and np.any(w2[j])]
        mlp = {"w1": w1[:, used], "w2": w2[used]} if used else {}
        layers.append({"attn": attn, "mlp": mlp})
    params = {
        "token_embed": p["token_embed"]["embeddings"],
        "pos_embed": p["pos_embed"]["embeddings"],
        "layers": layers,
    }
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=np.float32), params)
    return params, dense


def _written_layer(params: dict, dims: np.ndarray) -> int:
    """First layer boundary after which some sublayer has written into `dims` (0 = embeddings)."""
    for i, layer in enumerate(params["layers"]):
        if layer["attn"] and np.any(layer["attn"]["wo"][..., dims]):
            return i + 1
        if layer["mlp"] and np.any(layer["mlp"]["w2"][:, dims]):
            return i + 1
    return 0


def _compile(task: Task, program: rasp.SOp, max_seq_len: int, mlp_exactness: float, extracted) -> dict:
    """tracr's compile_rasp_to_model, step by step (we need the graph for the variable table)."""
    from tracr.compiler import (
        craft_graph_to_model,
        craft_model_to_transformer,
        expr_to_craft_graph,
        nodes,
        validating,
    )
    from tracr.craft import bases

    graph, sink = extracted.graph, extracted.sink
    unsupported = validating.static_validate(program)
    if unsupported:
        msg = "\n".join(f"{u.expr.name}: {u.reason}" for u in unsupported)
        raise NotImplementedError(f"tracr cannot compile this RASP program:\n{msg}")
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph, bos_dir=bases.BasisDirection(rasp.tokens.label, BOS), mlp_exactness=mlp_exactness
    )
    craft_model = craft_graph_to_model.craft_graph_to_model(graph, extracted.sources)
    model = craft_model_to_transformer.craft_model_to_transformer(
        craft_model=craft_model, graph=graph, sink=sink, max_seq_len=max_seq_len, causal=True,
        compiler_bos=BOS, compiler_pad=PAD,
    )
    params, dense = _trim_params(model)
    labels = list(model.residual_labels)
    index = {lab: i for i, lab in enumerate(labels)}
    enc = model.input_encoder.encoding_map
    vocab = [None] * len(enc)
    for t, i in enc.items():
        vocab[i] = t
    names = rasp_lib.display_names(program)
    variables = []
    for e in rasp_lib.sops(program):
        node = graph.nodes[e.label]
        basis = node[nodes.OUTPUT_BASIS]
        if isinstance(e, rasp.TokensType):
            basis = [d for d in basis if d.value not in (BOS, PAD)]
        dims = np.array([index[str(d)] for d in basis], dtype=np.int64)
        cat = rasp.is_categorical(e)
        variables.append(VarInfo(
            name=names[e.label], label=e.label, encoding="categorical" if cat else "numerical",
            values=[d.value for d in basis] if cat else [], dims=dims,
            layer=_written_layer(params, dims),
        ))
    # Residual labels with display names ("answer:yes" rather than "answer_57:yes").
    pretty = []
    for lab in labels:
        head, sep, rest = lab.partition(":")
        for e in sorted(rasp_lib.sops(program), key=lambda e: -len(e.label)):
            if head == e.label or head.startswith(e.label + "_"):
                head = names[e.label] + head[len(e.label):]
                break
        pretty.append(head + sep + rest)
    return {
        "format": FORMAT_VERSION, "task": task.name, "params": params, "labels": pretty,
        "raw_labels": labels, "vocab": vocab, "vars": variables, "n_layers": len(params["layers"]),
        "max_seq_len": max_seq_len, "answer_var": names[program.label], "mlp_exactness": mlp_exactness,
        "tracr_param_count": dense, "model": model,
    }


def _prepare(task: Task, max_seq_len: int | None):
    """Canonical program, tracr graph with inferred value sets, and the cache key."""
    from tracr.compiler import basis_inference, rasp_to_graph

    n = check_teacher_size(task, max_seq_len)
    program = rasp_lib.canonicalize(task.program(n))
    vocab = set(task.teacher_vocab())
    if BOS in vocab or PAD in vocab:
        raise ValueError(f"the teacher vocabulary must not contain {BOS!r} or {PAD!r}")
    exactness = task.mlp_exactness(n)
    extracted = rasp_to_graph.extract_rasp_graph(program)
    basis_inference.infer_bases(extracted.graph, extracted.sink, vocab, n)
    key = _fingerprint(extracted.graph, program, vocab, n, exactness)
    return n, program, exactness, extracted, key


def teacher_fingerprint(task: Task | str, max_seq_len: int | None = None) -> str:
    """The cache key `compile_teacher` would use (program truth tables, vocab, sizes, versions)."""
    if isinstance(task, str):
        task = get_task(task)
    return _prepare(task, max_seq_len)[-1]


def compile_teacher(
    task: Task | str,
    max_seq_len: int | None = None,
    *,
    cache: bool = True,
    cache_path: str | Path | None = None,
    verbose: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Teacher:
    """Compile `task`'s RASP program with tracr (causal) or load it from the on-disk cache.

    `max_seq_len` (default `task.default_max_seq_len`) counts teacher tokens without the BOS; sizes that
    hold no problem or are beyond `task.max_teacher_seq_len` are refused at once (`check_teacher_size`).
    `cache_path` overrides the cache directory (`$JINJECT_CACHE` or `~/.cache/jinject/teachers`).
    `progress(message)` is told when a real compile (not a cache load) starts: it can take minutes.
    """
    if isinstance(task, str):
        task = get_task(task)
    t0 = time.perf_counter()
    n, program, exactness, extracted, key = _prepare(task, max_seq_len)
    directory = Path(cache_path) if cache_path is not None else cache_dir()
    path = directory / f"{task.name}-n{n}-{key[:16]}.pkl"
    if cache and path.exists():
        try:
            with open(path, "rb") as f:
                meta = pickle.load(f)
            if meta.get("format") == FORMAT_VERSION and meta.get("key") == key:
                took = time.perf_counter() - t0
                if verbose:
                    print(f"loaded {path} in {took:.2f} s")
                return _teacher(meta, task, program, load_seconds=took, from_cache=True, cache_path=path)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
            pass  # a broken cache file is recompiled and overwritten
    if progress is not None:
        progress(f"compiling the {task.name} teacher (max_seq_len {n}) with tracr; it is cached afterwards")
    meta = _compile(task, program, n, exactness, extracted)
    meta["key"] = key
    meta["compile_seconds"] = time.perf_counter() - t0
    model = meta.pop("model")
    if cache:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            pickle.dump(meta, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    if verbose:
        print(f"compiled {task.name} (max_seq_len {n}) in {meta['compile_seconds']:.1f} s")
    return _teacher(meta, task, program, tracr_model=model, cache_path=path if cache else None)


def _teacher(meta: dict[str, Any], task: Task, program: rasp.SOp, **build: Any) -> Teacher:
    """The `Teacher` of a cache entry (the metadata dict `_compile` returns, as pickled)."""
    build_info = Build(fingerprint=meta["key"], mlp_exactness=meta["mlp_exactness"],
                       tracr_param_count=int(meta["tracr_param_count"]), compile_seconds=meta["compile_seconds"],
                       **build)
    return Teacher(
        task=task, program=program, params=jax.tree_util.tree_map(jnp.asarray, meta["params"]),
        labels=list(meta["labels"]), vocab=list(meta["vocab"]), var_info={v.name: v for v in meta["vars"]},
        answer_var=meta["answer_var"], max_seq_len=meta["max_seq_len"], build=build_info,
    )
