"""The base class of plugins that put signed links into a copy (clicks, the pixel, unsubscribe).

It lives in the toolkit, not in the token module, because it is plugin plumbing: the signer and
the base URL come from the plugin environment, the ``base_url`` key from the plugin's config.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from pipeline.contract.plugin import Plugin, PluginConfig, PluginEnv, TokenSigner
from pipeline.toolkit.tokens import validate_base_url


class TrackingPlugin(Plugin):
    """Base for plugins that put signed links into a copy (clicks, the pixel, unsubscribe).

    Gives ``self.signer`` (the gateway's ``[tracking]`` keys, which the tracking HTTP service
    verifies with) and ``self.base_url`` (the plugin's own ``base_url``, else ``[tracking]
    base_url``), both validated at start-up. A subclass's ``Config`` extends ``TrackingPlugin.Config``.
    """

    class Config(PluginConfig):
        base_url: str | None = None  # default: [tracking] base_url

        @field_validator("base_url")
        @classmethod
        def _base(cls, v: str | None) -> str | None:
            return None if v is None else validate_base_url(v)

    def __init__(self, config: Any, env: PluginEnv) -> None:
        super().__init__(config, env)
        self.signer: TokenSigner = env.signer
        self.base_url: str = config.base_url or validate_base_url(env.tracking_base_url)
