"""Feature switches: config default < credential feature set < ``X-SMTPeter-<Feature>`` header,
unless the credential locks the feature. Control headers never leave the gateway.

An invalid header value (``X-SMTPeter-TrackOpens: maybe``) is rejected at DATA with
``550 5.6.0``: guessing would either track someone who asked not to be tracked or silently
drop a feature the sender paid for; a clear error makes the sender fix the header.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from pipeline.contract.context import Credential
from pipeline.contract.message import Message, current_actor
from pipeline.contract.verdicts import Reject

log = logging.getLogger("smtpgate.features")

CONTROL_PREFIX = "x-smtpeter-"
#: The switches a message may set by header. The others (dkim, validate, campaign, plugin
#: features) are policy: only the config and the credential decide them, so a sender cannot
#: switch off validation or signing with a header.
HEADER_FEATURES = frozenset({"inlinecss", "trackclicks", "trackopens", "trackbounces"})
_TRUE = {"true"}
_FALSE = {"false"}


def resolve_features(
    defaults: Mapping[str, bool],
    credential: Credential | None,
    message: Message | None = None,
) -> dict[str, bool] | Reject:
    """Resolve every switch for one message and strip the control headers from it.

    Returns the resolved switches, or a :class:`Reject` naming the header whose value is invalid.
    """
    features = dict(defaults)
    locked: frozenset[str] = frozenset()
    if credential is not None:
        features.update(credential.features)
        locked = credential.locked
    if message is None:
        return features
    controls = [h for h in message.headers if h.name.lower().startswith(CONTROL_PREFIX)]
    for header in controls:
        feature = header.name.lower()[len(CONTROL_PREFIX) :]
        if feature not in HEADER_FEATURES:
            log.info("ignoring control header %s: not a switch a message may set", header.name)
            continue
        value = header.value.strip().lower()
        if value in _TRUE:
            wanted = True
        elif value in _FALSE:
            wanted = False
        else:
            return Reject(550, "5.6.0", f"Invalid {header.name} header: expected true or false")
        if feature in locked:
            log.info("credential locks %s; %s ignored", feature, header.name)
            continue
        features[feature] = wanted
    for name in {h.name.lower() for h in controls}:
        message.remove_header(name)
    return features


def strip_header_prefixes(message: Message, prefixes: Sequence[str]) -> list[str]:
    """Remove every header whose name starts with one of ``prefixes`` (lower case); the names removed.

    Applied after ``on_message`` whether or not a dialect plugin is enabled or in the chain, so a
    vendor's control headers (and the recipient list of ``X-SMTPAPI``) never reach a recipient.
    """
    names = {h.name.lower() for h in message.headers if h.name.lower().startswith(tuple(prefixes))}
    token = current_actor.set("gateway")
    try:
        for name in sorted(names):
            message.remove_header(name)
    finally:
        current_actor.reset(token)
    return sorted(names)
