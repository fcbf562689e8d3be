"""A jax/flax version mismatch as an error that names the fix.

flax reaches into jax's internals, so an older flax beside a newer jax fails on import with an error from
deep inside flax: flax 0.12.8 (this project's lock) with jax 0.11.2 raises `AttributeError: module
'jax.experimental.hijax' has no attribute 'HiPrimitive'`. pip does not know to upgrade flax when jax moves
(a TPU VM or Colab image with its own jax), so the user meets this first; flax 0.12.10 works with jax 0.11.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed(name: str) -> str | None:
    """The installed version of distribution `name`, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


class FlaxMismatch(ImportError):
    """flax is installed but does not import beside the installed jax."""


def check_flax_imports() -> None:
    """Import flax, or raise FlaxMismatch with both versions and the upgrade that fixes it."""
    try:
        import flax.nnx  # noqa: F401
    except (ImportError, AttributeError) as e:
        flax, jax = (installed(name) or "(not installed)" for name in ("flax", "jax"))
        raise FlaxMismatch(
            f"flax {flax} does not import beside jax {jax} ({type(e).__name__}: {e}). "
            "flax must be a release made for this jax: upgrade it with `pip install -U flax` "
            "(jax 0.11 needs flax 0.12.10 or newer), or install the tested set with `make venv`"
        ) from e
