"""The web console (``/console/`` on the API listener, docs/console.md): the message log with search
and each message's timeline, the queue with hold/release/retry, suppressions, credentials,
webhooks, DKIM domains and statistics, as server-rendered HTML that works without JavaScript.

It signs in with an API token and then works through the very handlers and ports behind
``/api/v1`` (never HTTP calls to itself), so a tenant's token sees exactly what its API calls see.
"""

from __future__ import annotations

from pipeline.api.console.app import ConsolePorts, add_console

__all__ = ["ConsolePorts", "add_console"]
