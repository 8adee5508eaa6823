"""Deprecated import path, kept for one release (see CHANGELOG.md): use :mod:`pipeline.chain.driver`.

The old name is an alias of the new module, so every name (and monkeypatch on it) still works.
"""

import sys
import warnings

import pipeline.chain.driver as _moved

warnings.warn("pipeline.testing is deprecated: import pipeline.chain.driver", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
