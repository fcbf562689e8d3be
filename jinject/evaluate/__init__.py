"""Evaluation of a trained run: accuracy, language retention, decoding accuracy, causal tests -> eval.json.

One module per measurement (`accuracy`; `language`: retention; `probing`: decoding accuracy; `causal` and
`interchange`: is the answer in the answer subspace) around one shared readout of the RASP variables
(`readout`, also used by `jinject.decoding`); `report` runs them all on a run and formats the table;
`config` holds the settings and their defaults (`EvalConfig`, read by `jinject eval`); `batching` runs a
model jitted over fixed-shape batches.

The public names are imported lazily, so that `jinject.evaluate.config` loads without JAX (the command
line builds its parser from it).
"""

from __future__ import annotations

from jinject import lazy_exports

_PUBLIC = {
    "EvalConfig": "config",
    "EVAL_SEED": "config",
    "NOISE_NORMS": "config",
    "RELATIVE_NOISE": "config",
    "SKIP_VARIABLES": "readout",
    "NUMERIC_DECIMALS": "readout",
    "variable_dims": "readout",
    "variable_kinds": "readout",
    "value_grid": "readout",
    "nearest": "readout",
    "same_value": "readout",
    "mapped_and_teacher": "readout",
    "structural_scale": "readout",
    "calibrate_layer": "readout",
    "calibrate": "readout",
    "exact_match": "accuracy",
    "generation_accuracy": "accuracy",
    "teacher_forced_exact": "accuracy",
    "text_windows": "language",
    "retention": "language",
    "DecodingCollector": "probing",
    "decoding_accuracy": "probing",
    "random_basis": "causal",
    "subspace_noise": "causal",
    "causal_test": "causal",
    "residual_norms": "causal",
    "interchange_pairs": "interchange",
    "interchange_test": "interchange",
    "heldout_metrics": "heldout",
    "fits_teacher": "report",
    "split_examples": "report",
    "evaluate_run": "report",
    "format_table": "report",
}

__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_exports(__name__, {name: f".{module}" for name, module in _PUBLIC.items()})
