"""Feature switches: plugin default < ``[features]`` < credential feature set <
``X-SMTPeter-<Feature>`` header, unless the credential locks the feature. Control headers never
leave the gateway.

The switches are not listed anywhere by hand: :class:`FeatureRegistry` derives them from the
loaded plugins, each of which declares its ``feature``, its ``feature_default`` and whether a
message header may set it (``feature_by_header``). ``[features]``, credentials and headers accept
exactly those switches.

An invalid header value (``X-SMTPeter-TrackOpens: maybe``) is rejected at DATA with
``550 5.6.0``: guessing would either track someone who asked not to be tracked or silently
drop a feature the sender paid for; a clear error makes the sender fix the header.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.contract.context import Credential
from pipeline.contract.message import Message, current_actor
from pipeline.contract.verdicts import Reject

log = logging.getLogger("smtpgate.features")

CONTROL_PREFIX = "x-smtpeter-"
_TRUE = {"true"}
_FALSE = {"false"}


def resolve_features(
    defaults: Mapping[str, bool],
    credential: Credential | None,
    message: Message | None = None,
    header_switches: Collection[str] = frozenset(),
) -> dict[str, bool] | Reject:
    """Resolve every switch for one message and strip the control headers from it.

    ``header_switches`` are the switches a message may set by header; the others are policy
    (only the config and the credential decide them, so a sender cannot switch off validation
    or signing with a header). Returns the resolved switches, or a :class:`Reject` naming the
    header whose value is invalid.
    """
    features = dict(defaults)
    locked: frozenset[str] = frozenset()
    if credential is not None:
        features.update(credential.features)
        locked = credential.locked
    if message is None:
        return features
    controls = [h for h in message.headers if h.lname.startswith(CONTROL_PREFIX)]
    for header in controls:
        feature = header.lname[len(CONTROL_PREFIX) :]
        if feature not in header_switches:
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
    for name in {h.lname for h in controls}:
        message.remove_header(name)
    return features


@dataclass(frozen=True)
class Switch:
    """One feature switch: its default and the plugins it turns on and off."""

    name: str
    default: bool
    by_header: bool
    plugins: tuple[str, ...]


class FeatureError(ValueError):
    """A switch declaration or a switch name that does not fit the loaded plugins."""


class FeatureRegistry:
    """Every switch of the loaded plugins, with the configured defaults (``[features]`` wins)."""

    def __init__(self, switches: Iterable[Switch], overrides: Mapping[str, bool] | None = None) -> None:
        self.switches: dict[str, Switch] = {s.name: s for s in switches}
        self.defaults: dict[str, bool] = {name: s.default for name, s in sorted(self.switches.items())}
        for name, value in (overrides or {}).items():
            self.check(name)
            self.defaults[name] = value
        self.header_switches = frozenset(n for n, s in self.switches.items() if s.by_header)

    @classmethod
    def from_plugins(cls, plugins: Iterable[tuple[str, Any]], overrides: Mapping[str, bool] | None = None
                     ) -> FeatureRegistry:
        """From ``(name, plugin class)`` pairs. Several plugins may share a switch; those that
        declare ``feature_default`` / ``feature_by_header`` must agree, and at least one must
        declare the default. :class:`FeatureError` otherwise, or for an override naming no switch."""
        declared: dict[str, list[tuple[str, bool | None, bool | None]]] = {}
        for name, obj in plugins:
            feature = getattr(obj, "feature", None)
            if feature is None:
                continue
            if not isinstance(feature, str) or not feature or feature != feature.lower():
                raise FeatureError(f"plugin {name}: feature must be a lower-case name, got {feature!r}")
            default = getattr(obj, "feature_default", None)
            if default is not None and not isinstance(default, bool):
                raise FeatureError(f"plugin {name}: feature_default must be True or False, got {default!r}")
            by_header = getattr(obj, "feature_by_header", None)  # None: not declared (a header may set it)
            declared.setdefault(feature, []).append((name, default, by_header))
        switches = []
        for feature, decls in declared.items():
            defaults = {d for _, d, _ in decls if d is not None}
            headers = {h for _, _, h in decls if h is not None}
            names = ", ".join(n for n, _, _ in decls)
            if not defaults:
                raise FeatureError(
                    f"plugin {names}: feature {feature!r} has no default: declare feature_default = True or False"
                )
            if len(defaults) > 1 or len(headers) > 1:
                raise FeatureError(
                    f"plugins {names} declare feature {feature!r} differently (feature_default / feature_by_header)"
                )
            by_header = headers.pop() if headers else True
            switches.append(Switch(feature, defaults.pop(), bool(by_header), tuple(n for n, _, _ in decls)))
        return cls(switches, overrides)

    def check(self, name: str) -> None:
        """:class:`FeatureError` unless ``name`` is a switch of a loaded plugin."""
        if name not in self.switches:
            known = ", ".join(sorted(self.switches)) or "none: no loaded plugin declares a feature"
            raise FeatureError(f"{name}: no loaded plugin has this switch (switches: {known})")

    def resolve(self, credential: Credential | None, message: Message | None = None) -> dict[str, bool] | Reject:
        """:func:`resolve_features` with this registry's defaults and header switches."""
        return resolve_features(self.defaults, credential, message, self.header_switches)

    def session(self, credential: Credential | None) -> dict[str, bool]:
        """The switches before DATA (no message yet, so no header can refuse): defaults and credential."""
        features = resolve_features(self.defaults, credential)
        assert isinstance(features, dict)  # without a message there is no header to refuse
        return features


def strip_header_prefixes(message: Message, prefixes: Sequence[str]) -> list[str]:
    """Remove every header whose name starts with one of ``prefixes`` (lower case); the names removed.

    Applied after ``on_message`` whether or not a dialect plugin is enabled or in the chain, so a
    vendor's control headers (and the recipient list of ``X-SMTPAPI``) never reach a recipient.
    """
    starts = tuple(prefixes)
    names = {h.lname for h in message.headers if h.lname.startswith(starts)}
    token = current_actor.set("gateway")
    try:
        for name in sorted(names):
            message.remove_header(name)
    finally:
        current_actor.reset(token)
    return sorted(names)
