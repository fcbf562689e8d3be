"""`compile_teacher`: a task's RASP program -> a compiled, cached, verified-ready teacher transformer.

The teacher is tracr's compiled model (causal, no layer norm) re-expressed as plain arrays and a pure
forward function, so that the training step can pass `teacher.params` into `jax.jit` as an argument:

- `teacher.residuals(params, ids)` -> float32 `[L + 1, B, T, D]`: index 0 = embeddings, index i = the
  residual after teacher layer i. A tracr layer is one attention sublayer + one MLP sublayer; tracr
  already counts a layer whose attention (or MLP) is empty as a full layer, and so do we (the empty
  sublayer is the identity). `residuals(params, ids, sublayers=True)` gives `[2L + 1, B, T, D]`
  (after every sublayer), which is what tracr's `transformer_output.residuals` lists.
- `ids` are int32 `[B, T]`, BOS first, right-padded with `pad_id`; `T <= max_seq_len + 1`
  (`max_seq_len` counts tokens WITHOUT the BOS, as tracr does). The model is causal, so padding on the
  right never changes earlier positions.
- All matmuls run at `Precision.HIGHEST`: tracr's weights rely on near-exact arithmetic (softmax
  coldness 100, discretising MLPs with slopes up to 4n(n+1)).
- Zero padding that tracr adds (unused heads, unused MLP neurons, the global key size) is trimmed per
  layer; the result equals tracr's own forward (tests check it).

Cache: `$JINJECT_CACHE` or `~/.cache/jinject/teachers`, one pickle per teacher (numpy params +
metadata, not tracr's graph), keyed by a fingerprint of the program (its structure and the truth
table of every Map / SequenceMap / Select over the inferred value sets), the vocabulary,
max_seq_len, mlp_exactness, the tracr version and this file's format version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import itertools
import math
import os
import pickle
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tracr.rasp import rasp

from jinject.tasks import Task, get_task, rasp_lib
from jinject.tasks.base import check_teacher_size

__all__ = ["Teacher", "VarInfo", "compile_teacher", "check_teacher_size", "teacher_fingerprint", "cache_dir", "BOS",
           "PAD"]

FORMAT_VERSION = 1
BOS = "<bos>"
PAD = "<pad>"
HIGHEST = jax.lax.Precision.HIGHEST


def cache_dir() -> Path:
    return Path(os.environ.get("JINJECT_CACHE") or Path.home() / ".cache" / "jinject" / "teachers")


@dataclasses.dataclass
class VarInfo:
    """One RASP variable in the residual stream."""

    name: str  # display name (the S-Op's own name when unique in the program)
    label: str  # tracr label (name_id, stable thanks to rasp_lib.canonicalize)
    encoding: str  # "categorical" | "numerical"
    values: list  # categorical: value of each dim, in `dims` order; numerical: []
    dims: np.ndarray  # residual dimensions
    layer: int  # first layer boundary (index into residuals' axis 0) where the value is present

    @property
    def categorical(self) -> bool:
        return self.encoding == "categorical"


# ---------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------


def _forward(params: dict, ids: jax.Array, sublayers: bool = False) -> jax.Array:
    ids = jnp.asarray(ids, jnp.int32)
    T = ids.shape[1]
    x = jnp.take(params["token_embed"], ids, axis=0) + params["pos_embed"][None, :T]
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))
    out = [x]
    for layer in params["layers"]:
        att = layer["attn"]
        if att:
            q = jnp.einsum("btd,dhk->bthk", x, att["wq"], precision=HIGHEST)
            k = jnp.einsum("btd,dhk->bthk", x, att["wk"], precision=HIGHEST)
            v = jnp.einsum("btd,dhk->bthk", x, att["wv"], precision=HIGHEST)
            logits = jnp.einsum("bthk,bshk->bhts", q, k, precision=HIGHEST)
            logits = jnp.where(causal, logits, -1e30)
            w = jax.nn.softmax(logits, axis=-1)
            o = jnp.einsum("bhts,bshk->bthk", w, v, precision=HIGHEST)
            x = x + jnp.einsum("bthk,hkd->btd", o, att["wo"], precision=HIGHEST)
        if sublayers:
            out.append(x)
        mlp = layer["mlp"]
        if mlp:
            h = jax.nn.relu(jnp.einsum("btd,dm->btm", x, mlp["w1"], precision=HIGHEST))
            x = x + jnp.einsum("btm,md->btd", h, mlp["w2"], precision=HIGHEST)
        out.append(x)
    return jnp.stack(out)


def _residuals(params: dict, ids: jax.Array, sublayers: bool = False) -> jax.Array:
    """Residual stream at every layer boundary, `[L + 1, B, T, D]` (see module docstring)."""
    return _forward(params, ids, sublayers)


_jit_residuals = jax.jit(_residuals, static_argnames="sublayers")


# ---------------------------------------------------------------------------------------------------
# Teacher
# ---------------------------------------------------------------------------------------------------


class Teacher:
    """A compiled task teacher. Build with `compile_teacher`; see the module docstring for shapes."""

    def __init__(self, meta: dict[str, Any], task: Task, program: rasp.SOp | None = None):
        self.task = task
        self.meta = meta
        self.params = jax.tree_util.tree_map(jnp.asarray, meta["params"])
        self.n_layers: int = meta["n_layers"]
        self.d_model: int = len(meta["labels"])
        self.max_seq_len: int = meta["max_seq_len"]
        self.n_positions: int = self.max_seq_len + 1  # BOS included
        self.labels: list[str] = list(meta["labels"])
        self.vocab: list[str] = list(meta["vocab"])  # teacher token of each id
        self.token_to_id = {t: i for i, t in enumerate(self.vocab)}
        self.bos_id: int = self.token_to_id[BOS]
        self.pad_id: int = self.token_to_id[PAD]
        self.var_info: dict[str, VarInfo] = {v.name: v for v in meta["vars"]}
        self.variable_names: list[str] = [v.name for v in meta["vars"]]
        self.answer_var: str = meta["answer_var"]
        self.answer_dims: np.ndarray = self.var_info[self.answer_var].dims
        self.answer_values: list = self.var_info[self.answer_var].values
        self.mlp_exactness: float = meta["mlp_exactness"]
        self.fingerprint: str = meta["key"]
        self.compile_seconds: float = meta["compile_seconds"]
        self.load_seconds: float | None = None
        self.from_cache: bool = False
        self.cache_path: Path | None = None
        self.tracr_model = None  # the tracr AssembledTransformerModel when compiled in this process
        self._program = program

    # ---- sizes -------------------------------------------------------------------------------------
    @property
    def param_count(self) -> int:
        """Parameters of the (trimmed) teacher actually used by `residuals`."""
        return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.params)))

    @property
    def tracr_param_count(self) -> int:
        """Parameters of tracr's dense, zero-padded model (for comparison with the original)."""
        return int(self.meta["tracr_param_count"])

    @property
    def program(self) -> rasp.SOp:
        """The canonicalized RASP program (labels match `VarInfo.label`)."""
        if self._program is None:
            self._program = rasp_lib.canonicalize(self.task.program(self.max_seq_len))
        return self._program

    # ---- forward -----------------------------------------------------------------------------------
    @staticmethod
    def residuals(params: dict, ids: jax.Array, sublayers: bool = False) -> jax.Array:
        """Pure and jittable: `[L + 1, B, T, D]` float32 (`[2L + 1, ...]` with sublayers=True)."""
        return _residuals(params, ids, sublayers)

    def run(self, ids: Any, sublayers: bool = False) -> jax.Array:
        """Jitted `residuals(self.params, ids)` for eager use (evaluation, verification)."""
        return _jit_residuals(self.params, jnp.asarray(ids, jnp.int32), sublayers=sublayers)

    def encode(self, teacher_tokens: Sequence[str]) -> list[int]:
        """BOS + token ids (no padding). ValueError names an unknown symbol or the length limit."""
        self.task.check_teacher_tokens(teacher_tokens, self.max_seq_len)
        return [self.bos_id, *(self.token_to_id[t] for t in teacher_tokens)]

    def batch(self, token_lists: Sequence[Sequence[str]], length: int | None = None) -> np.ndarray:
        """int32 [B, T] ids: BOS + tokens, right-padded with pad_id to `length` (default: longest)."""
        rows = [self.encode(t) for t in token_lists]
        T = length or max(len(r) for r in rows)
        out = np.full((len(rows), T), self.pad_id, dtype=np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    # ---- decoding ----------------------------------------------------------------------------------
    def decode_indices(self, resid: Any) -> dict[str, np.ndarray]:
        """Categorical vars: index into `var_info[v].values` (-1 where empty); numerical: the value."""
        r = np.asarray(resid, dtype=np.float32)
        out = {}
        for name, v in self.var_info.items():
            x = r[..., v.dims]
            if v.categorical:
                i = np.argmax(x, axis=-1)
                out[name] = np.where(np.max(x, axis=-1) > 0.5, i, -1)
            else:
                out[name] = x[..., 0]
        return out

    def decode(self, resid: Any) -> dict[str, np.ndarray]:
        """Read every variable's value from residual vectors `[..., D]` (object arrays for categorical;
        None where the one-hot is empty, e.g. an aggregate that selected nothing)."""
        out = {}
        for name, idx in self.decode_indices(resid).items():
            v = self.var_info[name]
            if v.categorical:
                table = np.empty(len(v.values) + 1, dtype=object)
                table[:-1] = v.values
                table[-1] = None
                out[name] = table[idx]
            else:
                out[name] = idx
        return out

    def variables_from_ids(self, ids: Any, layer: int = -1) -> dict[str, np.ndarray]:
        """Decoded variables `[B, T]` at a layer boundary (default: the last) for a batch of ids."""
        return self.decode(np.asarray(self.run(ids)[layer]))

    def variables(self, prompt: str, with_answer: bool = False) -> dict[str, list]:
        """Every RASP variable's value at every teacher position of the prompt (BOS excluded).

        With `with_answer=True` the teacher's own answer tokens are appended first.
        """
        toks = list(self.task.prompt_teacher_tokens(prompt))
        if with_answer:
            toks += self._generate([toks])[0]
        dec = self.variables_from_ids(self.batch([toks], length=self.n_positions))
        return {k: v[0, 1: len(toks) + 1].tolist() for k, v in dec.items()}

    def _generate(self, prompts: Sequence[Sequence[str]], max_new: int | None = None) -> list[list[str]]:
        """Greedy answer tokens (end marker excluded) for teacher-token prompts, batched."""
        seqs = [list(p) for p in prompts]
        done = [False] * len(seqs)
        outs: list[list[str]] = [[] for _ in seqs]
        max_new = max_new or self.max_seq_len
        for _ in range(max_new):
            active = [i for i, d in enumerate(done) if not d and len(seqs[i]) < self.max_seq_len]
            if not active:
                break
            ids = self.batch([seqs[i] for i in active], length=self.n_positions)
            res = self.run(ids)
            ans = self.decode_indices(np.asarray(res[-1]))[self.answer_var]
            for row, i in enumerate(active):
                j = ans[row, len(seqs[i])]  # BOS shift: last token sits at position len(seq)
                nxt = self.answer_values[j] if j >= 0 else None
                if nxt is None or nxt == self.task.end_token or nxt not in self.token_to_id:
                    done[i] = True
                    continue
                seqs[i].append(nxt)
                outs[i].append(nxt)
            for i in range(len(seqs)):
                if not done[i] and len(seqs[i]) >= self.max_seq_len:
                    raise ValueError(
                        f"{self.task.name}: the answer does not fit in max_seq_len={self.max_seq_len} "
                        f"(no end marker after {len(outs[i])} answer tokens); compile a larger teacher"
                    )
        return outs

    def answer(self, prompt: str) -> str:
        """Run the compiled model greedily on a prompt text and decode its (semantic) answer."""
        return self.answers([prompt])[0]

    def answers(self, prompts: Sequence[str]) -> list[str]:
        """`answer` for many prompts in one batch per decoding step."""
        toks = []
        for p in prompts:
            problem = self.task.parse(p)
            limit = self.task.teacher_limit(problem)
            if limit:
                raise ValueError(limit)
            self.task.check_teacher_tokens(self.task.teacher_tokens(problem), self.max_seq_len)  # with answer
            toks.append(tuple(t for _, t in self.task.prompt_units(problem)))
        return [self.task.answer_from_tokens(o) for o in self._generate(toks)]

    def __repr__(self) -> str:
        return f"<Teacher {self.task.name} L={self.n_layers} D={self.d_model} n={self.max_seq_len}>"


# ---------------------------------------------------------------------------------------------------
# Compilation
# ---------------------------------------------------------------------------------------------------


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
                teacher = Teacher(meta, task, program)
                teacher.load_seconds = time.perf_counter() - t0
                teacher.from_cache, teacher.cache_path = True, path
                if verbose:
                    print(f"loaded {path} in {teacher.load_seconds:.2f} s")
                return teacher
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
    teacher = Teacher(meta, task, program)
    teacher.tracr_model = model
    teacher.cache_path = path if cache else None
    if verbose:
        print(f"compiled {task.name} (max_seq_len {n}) in {meta['compile_seconds']:.1f} s")
    return teacher
