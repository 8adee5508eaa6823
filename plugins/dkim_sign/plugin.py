"""The ``dkim_sign`` plugin: per-domain keys chosen by the From domain, sign, seal; and the
``smtpgate dkim`` commands it brings (:func:`DkimSign.smtpgate_cli_commands`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import dkim
from cryptography.hazmat.primitives import serialization
from pydantic import Field, field_validator, model_validator

from pipeline import MessageContext, Plugin, PluginConfig, PluginEnv, Reject, TempFail, hookimpl
from plugins.dkim_sign.keys import SigningKey, generate_key, is_dns_name, load_ed25519_key, load_rsa_key
from plugins.dkim_sign.signer import author_domain, self_test, sign_ed25519, sign_rsa, signed_headers


class DomainKeyConfig(PluginConfig):
    """``[plugins.dkim_sign.domains."example.com"]``."""

    selector: str
    key_file: Path
    ed25519_selector: str | None = None
    ed25519_key_file: Path | None = None

    @field_validator("selector", "ed25519_selector")
    @classmethod
    def _selector(cls, v: str | None) -> str | None:
        if v is not None and not is_dns_name(v):
            raise ValueError(f"{v!r} is not a valid selector (DNS labels)")
        return v

    @model_validator(mode="after")
    def _pair(self) -> DomainKeyConfig:
        if (self.ed25519_selector is None) != (self.ed25519_key_file is None):
            raise ValueError("ed25519_selector and ed25519_key_file go together")
        if self.ed25519_selector is not None and self.ed25519_selector == self.selector:
            raise ValueError("ed25519_selector must differ from selector (one DNS record per selector)")
        return self


class DkimSign(Plugin):
    """Signs the final bytes of each copy and seals the message against later edits."""

    name = "dkim_sign"
    feature = "dkim"
    feature_default = True
    feature_by_header = False  # policy: the config and the credential decide, never a message header
    version = "1.0"
    seals_message = True

    class Config(PluginConfig):
        domains: dict[str, DomainKeyConfig] = Field(default_factory=dict)
        default_domain: str | None = None
        match_parent_domains: bool = True  # From news.example.com may use example.com's key
        on_missing_key: Literal["unsigned", "tempfail"] = "unsigned"
        rsa_engine: Literal["openssl", "dkimpy"] = "openssl"

        @field_validator("domains")
        @classmethod
        def _domains(cls, v: dict[str, DomainKeyConfig]) -> dict[str, DomainKeyConfig]:
            out = {}
            for domain, key in v.items():
                if not is_dns_name(domain) or "." not in domain:
                    raise ValueError(f"{domain!r} is not a domain name")
                out[domain.lower().rstrip(".")] = key
            return out

        @model_validator(mode="after")
        def _default(self) -> DkimSign.Config:
            if self.default_domain is not None:
                self.default_domain = self.default_domain.lower().rstrip(".")
                if self.default_domain not in self.domains:
                    raise ValueError(
                        f"default_domain {self.default_domain!r} has no [plugins.dkim_sign.domains] entry"
                    )
            return self

    generate_key = staticmethod(generate_key)  # for a caller that resolves the plugin by name

    @staticmethod
    @hookimpl
    def smtpgate_cli_commands(
        load_env: Callable[[str | None], PluginEnv], config_option: Callable[[Any], Any]
    ) -> list[Any]:
        """``smtpgate dkim keygen`` (imported here: the chain never needs click)."""
        from plugins.dkim_sign.cli import dkim_commands

        return [dkim_commands(load_env, config_option)]

    def __init__(self, config: Config, env: PluginEnv) -> None:
        super().__init__(config, env)
        self.keys: dict[str, SigningKey] = {}
        for domain, entry in config.domains.items():
            self.keys[domain] = self._load(domain, entry)
        for key in self.keys.values():
            self_test(key, config.rsa_engine)

    def _path(self, path: Path) -> Path:
        """Relative key paths are relative to the data directory (where keygen writes)."""
        path = path.expanduser()
        return path if path.is_absolute() else Path(self.env.data_dir) / path

    def _load(self, domain: str, entry: DomainKeyConfig) -> SigningKey:
        where = f'domains."{domain}"'
        try:
            rsa_key = load_rsa_key(self._path(entry.key_file))
        except OSError as exc:
            raise ValueError(
                f"{where}.key_file: cannot read {self._path(entry.key_file)}: {exc.strerror}"
            ) from None
        except ValueError as exc:
            raise ValueError(f"{where}.key_file: {exc}") from None
        ed_key = None
        if entry.ed25519_key_file is not None:
            ed_path = self._path(entry.ed25519_key_file)
            try:
                ed_key = load_ed25519_key(ed_path)
            except OSError as exc:
                raise ValueError(f"{where}.ed25519_key_file: cannot read {ed_path}: {exc.strerror}") from None
            except ValueError as exc:
                raise ValueError(f"{where}.ed25519_key_file: {exc}") from None
        pem = rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return SigningKey(domain, entry.selector, rsa_key, pem, entry.ed25519_selector, ed_key)

    def key_for(self, from_domain: str | None) -> SigningKey | None:
        """The From domain's key, else a parent domain's (relaxed alignment), else the default's."""
        if from_domain:
            labels = from_domain.lower().rstrip(".").split(".")
            candidates = [".".join(labels[i:]) for i in range(len(labels) - 1)]
            if not self.config.match_parent_domains:
                candidates = candidates[:1]
            for candidate in candidates:
                if candidate in self.keys:
                    return self.keys[candidate]
        if self.config.default_domain is not None:
            return self.keys[self.config.default_domain]
        return None

    @hookimpl
    def on_message(self, ctx: MessageContext) -> Reject | None:
        """A missing key with ``on_missing_key = "tempfail"`` is known at DATA: refuse it there
        (5xx) instead of answering 250 and then failing every delivery attempt."""
        if self.config.on_missing_key != "tempfail":
            return None
        from_domain = author_domain(ctx.message.headers)
        if self.key_for(from_domain) is not None:
            return None
        shown = from_domain if from_domain and is_dns_name(from_domain) else "the From domain"
        return Reject(554, "5.3.5", f"No DKIM key for {shown} and no default_domain")

    @hookimpl
    def on_sign(self, ctx: MessageContext) -> TempFail | Reject | None:
        msg = ctx.message
        from_domain = author_domain(msg.headers)
        key = self.key_for(from_domain)
        if key is None:
            shown = from_domain if from_domain and is_dns_name(from_domain) else "the From domain"
            if self.config.on_missing_key == "tempfail":
                return TempFail(451, "4.3.5", f"No DKIM key for {shown} and no default_domain")
            self.log.warning(
                "queue_id=%s recipient=%s: no DKIM key for %s and no default_domain: sending unsigned",
                ctx.queue_id,
                ctx.recipient,
                shown,
            )
            return None
        data = msg.as_bytes()
        include = signed_headers([h.name for h in msg.headers])
        try:
            signatures = [sign_rsa(data, key, include, self.config.rsa_engine)]
            if key.ed25519 is not None:
                signatures.append(sign_ed25519(data, key, include))
        except dkim.MessageFormatError:
            # dkimpy cannot parse the header block (a line that is no field): retrying cannot help.
            return Reject(550, "5.6.0", "Message cannot be DKIM-signed: malformed header field")
        # Inserted bottom-up so the RSA signature ends on top: verifiers that only look at the
        # first signature (and may not know ed25519-sha256) see the one they understand.
        for sig in reversed(signatures):
            msg.insert_raw_header(sig, first=True)
        msg.seal()
        return None
