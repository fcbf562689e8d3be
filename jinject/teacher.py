"""`Teacher`: a compiled RASP program as plain arrays and one pure forward (`jinject.compiler` builds it).

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

Reading values out of residuals and greedy answering live in `jinject.readout`; the methods here that
do so are one-line conveniences. `VarInfo` stays in this module: cached teachers pickle it by this path.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
from tracr.rasp import rasp

from jinject import readout
from jinject.tasks import Example, Task
from jinject.tasks.fit import Misfit, misfit

__all__ = ["Teacher", "VarInfo", "Build", "residuals", "BOS", "PAD"]

BOS = "<bos>"
PAD = "<pad>"
HIGHEST = jax.lax.Precision.HIGHEST


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


def residuals(params: dict, ids: jax.Array, sublayers: bool = False) -> jax.Array:
    """Pure and jittable: the residual stream at every layer boundary, float32 `[L + 1, B, T, D]`
    (`[2L + 1, ...]` with sublayers=True); see the module docstring."""
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


_jit_residuals = jax.jit(residuals, static_argnames="sublayers")


@dataclasses.dataclass(frozen=True)
class Build:
    """Where a teacher came from: its cache key, compile settings and timings (not used by the forward)."""

    fingerprint: str  # the cache key (`jinject.compiler.teacher_fingerprint`)
    mlp_exactness: float
    tracr_param_count: int  # parameters of tracr's dense, zero-padded model (for comparison)
    compile_seconds: float
    load_seconds: float | None = None  # set when loaded from the cache
    from_cache: bool = False
    cache_path: Path | None = None
    tracr_model: Any = None  # tracr's AssembledTransformerModel when compiled in this process


@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
    """A compiled task teacher. Build with `jinject.compiler.compile_teacher`; shapes in the module docstring."""

    task: Task
    program: rasp.SOp  # the canonicalized RASP program (labels match `VarInfo.label`)
    params: dict  # pytree of jnp arrays: pass into jit, never close over it
    labels: list[str]  # one per residual dim, "var:value"
    vocab: list[str]  # teacher token of each id (BOS and pad included)
    var_info: dict[str, VarInfo]
    answer_var: str
    max_seq_len: int  # tokens WITHOUT BOS (tracr's convention)
    build: Build

    residuals = staticmethod(residuals)

    # ---- sizes -------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.params["layers"])

    @property
    def d_model(self) -> int:
        return len(self.labels)

    @property
    def n_positions(self) -> int:
        """Positions of the forward, BOS included."""
        return self.max_seq_len + 1

    @property
    def param_count(self) -> int:
        """Parameters of the (trimmed) teacher actually used by `residuals`."""
        return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.params)))

    # ---- vocabulary --------------------------------------------------------------------------------
    @functools.cached_property
    def token_to_id(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.vocab)}

    @property
    def bos_id(self) -> int:
        return self.token_to_id[BOS]

    @property
    def pad_id(self) -> int:
        return self.token_to_id[PAD]

    @functools.cached_property
    def input_tokens(self) -> frozenset[str]:
        """The tokens the teacher reads (its vocabulary without BOS and pad)."""
        return frozenset(self.vocab) - {BOS, PAD}

    # ---- variables ---------------------------------------------------------------------------------
    @property
    def variable_names(self) -> list[str]:
        return list(self.var_info)

    @property
    def answer_dims(self) -> np.ndarray:
        """Residual dims of the answer variable."""
        return self.var_info[self.answer_var].dims

    @property
    def answer_values(self) -> list:
        """Value of each answer dim, in `answer_dims` order."""
        return self.var_info[self.answer_var].values

    # ---- input -------------------------------------------------------------------------------------
    def misfit(self, example: Example) -> Misfit | None:
        """Why this teacher cannot run `example` with its answer (None: it can): the one rule of
        `jinject.tasks.fit`, with this teacher's own vocabulary and size."""
        return misfit(example.teacher_tokens, self.input_tokens, self.max_seq_len,
                      self.task.teacher_limit(example.problem))

    def refuse(self, why: Misfit) -> NoReturn:
        """Raise the ValueError for input this teacher cannot run."""
        if why.limit:
            raise ValueError(why.limit)
        if why.unknown:
            raise ValueError(f"symbol {why.unknown[0]!r} is not in the {self.task.name} teacher's vocabulary "
                             f"{sorted(self.input_tokens)}")
        raise ValueError(
            f"{self.task.name}: {why.needed} teacher positions needed (prompt + answer, BOS not counted) but this "
            f"teacher holds at most max_seq_len={why.max_seq_len}; compile a larger one with "
            f"compile_teacher(task, max_seq_len={why.needed})"
        )

    def encode(self, teacher_tokens: Sequence[str]) -> list[int]:
        """BOS + token ids (no padding). ValueError names an unknown symbol or the length limit."""
        why = misfit(teacher_tokens, self.input_tokens, self.max_seq_len)
        if why is not None:
            self.refuse(why)
        return [self.bos_id, *(self.token_to_id[t] for t in teacher_tokens)]

    def batch(self, token_lists: Sequence[Sequence[str]], length: int | None = None) -> np.ndarray:
        """int32 [B, T] ids: BOS + tokens, right-padded with pad_id to `length` (default: longest)."""
        rows = [self.encode(t) for t in token_lists]
        T = length or max(len(r) for r in rows)
        out = np.full((len(rows), T), self.pad_id, dtype=np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    # ---- forward -----------------------------------------------------------------------------------
    def run(self, ids: Any, sublayers: bool = False) -> jax.Array:
        """Jitted `residuals(self.params, ids)` for eager use (evaluation, verification)."""
        return _jit_residuals(self.params, jnp.asarray(ids, jnp.int32), sublayers=sublayers)

    # ---- readout (jinject.readout) -----------------------------------------------------------------
    def decode_indices(self, resid: Any) -> dict[str, np.ndarray]:
        """Categorical vars: index into `var_info[v].values` (-1 where empty); numerical: the value."""
        return readout.decode_indices(self.var_info, resid)

    def decode(self, resid: Any) -> dict[str, np.ndarray]:
        """Every variable's value from residual vectors `[..., D]` (None where a one-hot is empty)."""
        return readout.decode(self.var_info, resid)

    def variables_from_ids(self, ids: Any, layer: int = -1) -> dict[str, np.ndarray]:
        """Decoded variables `[B, T]` at a layer boundary (default: the last) for a batch of ids."""
        return self.decode(np.asarray(self.run(ids)[layer]))

    def variables(self, prompt: str, with_answer: bool = False) -> dict[str, list]:
        """Every RASP variable's value at every teacher position of the prompt (BOS excluded); with
        `with_answer=True` the teacher's own answer tokens are appended first."""
        return readout.variables(self, prompt, with_answer)

    def answer(self, prompt: str) -> str:
        """Run the compiled model greedily on a prompt text and decode its (semantic) answer."""
        return self.answers([prompt])[0]

    def answers(self, prompts: Sequence[str]) -> list[str]:
        """`answer` for many prompts in one batch per decoding step."""
        return readout.answers(self, prompts)

    def __repr__(self) -> str:
        return f"<Teacher {self.task.name} L={self.n_layers} D={self.d_model} n={self.max_seq_len}>"
