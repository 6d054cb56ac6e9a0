"""Small shared helpers (atomic file writes, ...)."""

from nfldm.utils.io import atomic_save_png, atomic_write_bytes, atomic_write_json

__all__ = ["atomic_save_png", "atomic_write_bytes", "atomic_write_json"]
