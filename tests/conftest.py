"""Session-wide test settings."""

from __future__ import annotations

import os
import tempfile

# generation metrics cache real-set features on disk (nfldm.ldm.evaluate.cached_features): keep the
# tests' cache out of the user's ~/.cache, in one folder for the whole session
os.environ.setdefault("NFLDM_CACHE", tempfile.mkdtemp(prefix="nfldm-test-cache-"))
