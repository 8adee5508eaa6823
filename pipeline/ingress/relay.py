"""The relay decision: who may send, and to which recipient.

A client is *authorized* when it authenticated (AUTH) or its address is on an IP allow-list
(``kind = "ip"`` credentials, matched at connect). An authorized client may send anywhere; an
unauthorized one only to the gateway's own domains: the inbound domains (the VERP bounce
domain, whose mail goes to its handler) and ``[relay] local_domains``. On a listener with
``require_tls``, relaying needs TLS too. The stoplist is checked after this decision, by the
``on_rcpt_to`` hook of the ``suppression`` plugin.

When nothing at all could be accepted from an unauthorized client (no inbound or local domain),
the refusal comes at MAIL (``530 5.7.0``, as SMTPeter, enKod and Sendsay document), otherwise at
RCPT, where the recipient decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.ingress import replies as R
from pipeline.ingress.addresses import Path, domain_matches


@dataclass(frozen=True)
class Client:
    """What the relay decision needs to know about the session."""

    authorized: bool
    tls: bool
    require_tls: bool

    @property
    def needs_tls(self) -> bool:
        return self.require_tls and not self.tls


def mail_refusal(client: Client, accepts_unauthorized: bool) -> str | None:
    """The reply refusing MAIL from an unauthorized client that could send nowhere, or ``None``."""
    if client.authorized or accepts_unauthorized:
        return None
    return R.STARTTLS_FIRST if client.needs_tls else R.AUTH_REQUIRED


def non_fqdn(domain: str) -> bool:
    """Whether a sender domain is not fully qualified (Postfix's ``reject_non_fqdn_sender``).

    A domain literal (``[192.0.2.1]``) counts as qualified; a name needs a dot and a label after it.
    """
    if domain.startswith("["):
        return False
    labels = domain.rstrip(".").split(".")
    return len(labels) < 2 or not all(labels)


def sender_refusal(path: Path, reject_non_fqdn: bool) -> str | None:
    """The reply refusing a sender address on its form, or ``None`` (the null sender passes)."""
    if reject_non_fqdn and path.address and non_fqdn(path.domain):
        return R.NON_FQDN_SENDER
    return None


def rcpt_refusal(client: Client, path: Path, local: bool) -> str | None:
    """The reply refusing one recipient, or ``None``.

    ``local``: the recipient is in one of the gateway's own domains (inbound or local). A relay
    trick (``%``, ``!``, source routes) is only ever allowed to an authorized client, and then
    only because the next hop is ours to choose.
    """
    trick = path.relay_trick
    if local:
        return R.RELAY_DENIED if trick and not client.authorized else None
    if not client.authorized:
        if trick:
            return R.RELAY_DENIED
        return R.STARTTLS_FIRST if client.needs_tls else R.AUTH_REQUIRED
    return R.STARTTLS_FIRST if client.needs_tls else None


def is_local(domain: str, local_domains: list[str], inbound: bool) -> bool:
    """Whether ``domain`` is one the gateway receives itself (an inbound sink or a local domain)."""
    return inbound or domain_matches(domain, local_domains)
