"""Deprecated import path, kept for one release (see CHANGELOG.md): use :mod:`pipeline.toolkit.tokens`.

The old name is an alias of the new module, so every name (and monkeypatch on it) still works.
"""

import sys
import warnings

import pipeline.toolkit.tokens as _moved

warnings.warn("pipeline.tokens is deprecated: import pipeline.toolkit.tokens", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
