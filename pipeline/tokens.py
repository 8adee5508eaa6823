"""Deprecated import path, kept for one release (see CHANGELOG.md).

Token signing moved to :mod:`pipeline.toolkit.tokens` and the tracking plugin base to
:mod:`pipeline.toolkit.tracking`; both are re-exported here so old imports keep working.
``gateway_signer(env)`` is gone: a plugin's environment carries its signer (``env.signer``).
"""

import warnings

from pipeline.toolkit.tokens import TokenSigner, copy_payload, load_signer, validate_base_url
from pipeline.toolkit.tracking import TrackingPlugin

warnings.warn(
    "pipeline.tokens is deprecated: import pipeline.toolkit.tokens / pipeline.toolkit.tracking",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["TokenSigner", "TrackingPlugin", "copy_payload", "load_signer", "validate_base_url"]
