"""Session-wide set-up: a persistent XLA compilation cache in a fresh temporary directory.

The suite trains the same tiny student many times (in this process and in subprocess workers, which
inherit the directory through the environment); with the cache each distinct train step is compiled
once (a tiny train() goes from ~15 s to ~3.5 s of CPU). A cached executable is the compiled program
itself, so every result stays bit-identical.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import jax

if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _cache = tempfile.mkdtemp(prefix="jinject-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")))
