"""Config section of the management API: ``[api]`` (pipeline/api/; docs/api.md).

Re-exported by :mod:`pipeline.config`, whose :class:`~pipeline.config.Config` holds it.
"""

from __future__ import annotations

from pydantic import Field

from pipeline.config.base import Section


class ApiSection(Section):
    """The management API: its own listener, so it is never on the public tracking one."""

    listen_address: str = "127.0.0.1"
    listen_port: int = Field(default=8081, ge=0, le=65535)
    console: bool = True  # the web console at /console/ on the same listener (false: the JSON API only)
    # A tenant's token may add webhook URLs whose host is loopback, private, link-local or otherwise
    # not global (checked at add and at a test send); off: a tenant cannot aim the gateway's POSTs
    # into the operator's own network. An administrator's token is never limited.
    tenant_webhook_private: bool = False
