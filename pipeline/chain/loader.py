"""Finding, configuring and registering plugins.

A name in ``[chain] plugins`` is resolved, in this order, as: a built-in (``plugins/``), an
entry point in the group ``smtpgate.plugins``, ``package.module:Class``, or a file path
(``path/to/file.py`` or ``path/to/file.py:Class``). Built-ins are ordinary plugins listed in
:data:`BUILTINS`; they get no private API.

Start-up fails (``ConfigError``) on: an unknown plugin, two plugins with one name, a hook name
that matches no spec (pluggy's ``check_pending``), a config key the plugin does not declare,
a feature switch without a default, a switch name in ``[features]`` or a credential that no
loaded plugin declares, and a plugin placed after a signer in the sign phase.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
from pydantic import ValidationError

from pipeline.chain.features import FeatureError, FeatureRegistry
from pipeline.config import ChainSection, Config, ConfigError, format_validation_error, validate_strict
from pipeline.contract import hookspecs
from pipeline.contract.plugin import PluginConfig, PluginEnv, SuppressionList
from pipeline.contract.vocabulary import PluginSource
from pipeline.toolkit.tokens import load_signer

ENTRY_POINT_GROUP = "smtpgate.plugins"

BUILTINS: dict[str, str] = {
    "header_validation": "plugins.header_validation:HeaderValidation",
    "campaign_tag": "plugins.campaign_tag:CampaignTag",
    "sendgrid_smtpapi": "plugins.sendgrid_smtpapi:SendgridSmtpapi",
    "mailgun_headers": "plugins.mailgun_headers:MailgunHeaders",
    "postmark_headers": "plugins.postmark_headers:PostmarkHeaders",
    "ses_headers": "plugins.ses_headers:SesHeaders",
    "mailerq_headers": "plugins.mailerq_headers:MailerqHeaders",
    "css_inline": "plugins.css_inline:CssInline",
    "click_tracking": "plugins.click_tracking:ClickTracking",
    "open_pixel": "plugins.open_pixel:OpenPixel",
    "suppression": "plugins.suppression:Suppression",
    "bounce_tracking": "plugins.bounce_tracking:BounceTracking",
    "list_unsubscribe": "plugins.list_unsubscribe:ListUnsubscribe",
    "dkim_sign": "plugins.dkim_sign:DkimSign",
}


@dataclass
class LoadedPlugin:
    """A configured plugin instance and where it came from."""

    name: str
    instance: Any
    source: str  # "built-in", "entry point (<dist>)", "module <mod>", "file <path>", "given"
    version: str
    feature: str | None
    hooks: list[str] = field(default_factory=list)
    seals_message: bool = False
    feature_default: bool | None = None
    verp_sender: bool = False

    @property
    def origin(self) -> PluginSource:
        """The kind of source, without its detail (``source`` says which distribution, module or file)."""
        return next((s for s in PluginSource if self.source == s or self.source.startswith(f"{s} ")),
                    PluginSource.GIVEN)


def _import_object(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def _load_file(spec: str) -> Any:
    path_str, cls_name = spec.rsplit(":", 1) if ".py:" in spec else (spec, "")
    path = Path(path_str).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"plugin file {path} not found")
    mod_name = f"smtpgate_plugin_{abs(hash(str(path))):x}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"cannot load plugin file {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # a user's file: report it, don't crash with a traceback
        raise ConfigError(f"plugin file {path}: {type(exc).__name__}: {exc}") from None
    if cls_name:
        try:
            return getattr(module, cls_name)
        except AttributeError:
            raise ConfigError(f"plugin file {path} has no class {cls_name}") from None
    candidates = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and obj.__module__ == mod_name and bool(getattr(obj, "name", None)) and _hook_names(obj)
    ]
    if len(candidates) != 1:
        raise ConfigError(
            f"plugin file {path} defines {len(candidates)} plugin classes; name one as {path}:ClassName"
        )
    return candidates[0]


def _hook_names(cls: Any) -> list[str]:
    return [n for n, v in inspect.getmembers(cls) if callable(v) and hasattr(v, "smtpgate_impl")]


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _dist_version(obj: Any) -> str | None:
    """The version of the installed distribution whose entry point names ``obj``."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.value.split(":")[0] == obj.__module__ and ep.dist is not None:
            return str(ep.dist.version)
    return None


def resolve(name: str) -> tuple[Any, str]:
    """The plugin class for a ``[chain] plugins`` entry, and a description of its source."""
    if name in BUILTINS:
        try:
            return _import_object(BUILTINS[name]), PluginSource.BUILTIN
        except Exception as exc:  # a broken install: one line naming the plugin, not a traceback
            raise ConfigError(f"chain.plugins: built-in plugin {name!r} cannot be loaded: {exc}") from None
    eps = _entry_points()
    if name in eps:
        ep = eps[name]
        dist = ep.dist.name if ep.dist else "?"
        try:
            return ep.load(), f"{PluginSource.ENTRY_POINT} ({dist})"
        except Exception as exc:
            raise ConfigError(f"chain.plugins: plugin {name!r} from {dist} cannot be loaded: {exc}") from None
    if name.endswith(".py") or ".py:" in name or "/" in name:
        return _load_file(name), f"{PluginSource.FILE} {name}"
    if ":" in name:
        try:
            return _import_object(name), f"{PluginSource.MODULE} {name.partition(':')[0]}"
        except Exception as exc:  # ImportError, AttributeError, or whatever the module raises
            raise ConfigError(f"chain.plugins: cannot import {name}: {type(exc).__name__}: {exc}") from None
    known = sorted(set(BUILTINS) | set(eps))
    raise ConfigError(f"chain.plugins: unknown plugin {name!r} (known: {', '.join(known)})")


def feature_registry(config: Config, classes: list[tuple[str, Any]] | None = None) -> FeatureRegistry:
    """The switches of the chain's plugins (``classes``: ``(name, class)`` pairs, default: resolved
    from ``[chain] plugins`` without starting them), with ``[features]`` applied. Every switch name
    the config uses (``[features]``, a credential's ``features`` and ``locked``) must be one of
    them: :class:`ConfigError` naming the key otherwise."""
    source = config.source
    if classes is None:
        classes = [(str(getattr(obj, "name", "") or name), obj) for name, (obj, _) in
                   ((n, resolve(n)) for n in config.chain.plugins)]
    try:
        registry = FeatureRegistry.from_plugins(classes)
    except FeatureError as exc:
        raise ConfigError(f"{source}: chain.plugins: {exc}") from None
    uses = [("features", name) for name in config.features]
    for i, cred in enumerate(config.credentials):
        uses += [(f"credentials[{i}].features", n) for n in cred.features]
        uses += [(f"credentials[{i}].locked", n) for n in cred.locked]
    for key, name in uses:
        try:
            registry.check(name)
        except FeatureError as exc:
            raise ConfigError(f"{source}: {key}.{exc}") from None
    return FeatureRegistry(registry.switches.values(), config.features)


def plugin_config_errors(error: ConfigError) -> list[str]:
    """The ``[plugins.<name>]`` problems of a file whose core sections failed validation.

    The chain cannot be built from an invalid config, but each plugin's options can still be
    checked against its ``Config`` model, so one run reports every error of the file.
    """
    raw = error.raw or {}
    chain = raw.get("chain")
    names = chain.get("plugins") if isinstance(chain, dict) else None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        names = ChainSection().plugins
    sections = raw.get("plugins") if isinstance(raw.get("plugins"), dict) else {}
    errors: list[str] = []
    for entry in names:
        try:
            obj, _ = resolve(entry)
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        name = getattr(obj, "name", "")
        section = sections.get(name, {}) if isinstance(sections, dict) else {}
        try:
            validate_strict(getattr(obj, "Config", PluginConfig), section)
        except ValidationError as exc:
            errors.append(format_validation_error(error.source, exc, prefix=f"plugins.{name}", origins=error.origins))
    return errors


def plugin_env(
    config: Config,
    features: FeatureRegistry | None = None,
    open_suppression: Callable[[], SuppressionList] | None = None,
) -> PluginEnv:
    """The facts and ports a plugin of this gateway gets (never the whole :class:`Config`)."""
    tracking = config.tracking
    data_dir = config.gateway.data_dir
    env = PluginEnv(
        hostname=config.gateway.hostname,
        data_dir=data_dir,
        features=dict(features.defaults) if features is not None else {},
        tracking_base_url=tracking.base_url,
        bounce_domain=tracking.bounce_domain,
        open_signer=lambda: load_signer(tracking.keys, tracking.key_id, data_dir, config.storage.url),
    )
    if open_suppression is not None:
        env.open_suppression = open_suppression
    return env


class PluginSet:
    """The configured plugins of one gateway instance, in run order, registered with pluggy.

    ``features`` is the switch registry derived from these plugins. ``open_suppression`` opens the
    stoplist for ``env.suppression``; the composition root passes it (the chain machinery does
    not know where the event store keeps the list).
    """

    def __init__(
        self,
        config: Config,
        extra: list[Any] | None = None,
        *,
        open_suppression: Callable[[], SuppressionList] | None = None,
    ) -> None:
        self.config = config
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[LoadedPlugin] = []
        # Every plugin is resolved and configured before any error is raised, so one run of
        # check-config shows the problems of every [plugins.<name>] section, not the first.
        errors: list[str] = []
        entries: list[tuple[Any, str]] = []
        for n in config.chain.plugins:
            try:
                entries.append(resolve(n))
            except ConfigError as exc:
                errors.append(str(exc))
        if errors:
            raise ConfigError("\n".join(errors))
        entries += [(obj, PluginSource.GIVEN) for obj in extra or ()]
        checked = [(self._check_class(obj, source), obj, source) for obj, source in entries]
        self.features = feature_registry(config, [(name, obj) for (name, _), obj, _ in checked])
        env = plugin_env(config, self.features, open_suppression)
        names: set[str] = set()
        for (name, hooks), obj, source in checked:
            try:
                loaded = self._instantiate(obj, source, env, name, hooks)
            except ConfigError as exc:
                errors.append(str(exc))
                names.add(name)
                continue
            if source.startswith(PluginSource.ENTRY_POINT) and "version" not in vars(obj):
                loaded.version = _dist_version(obj) or loaded.version  # the installed package's version
            if loaded.name in names:
                errors.append(f"{config.source}: chain.plugins: two plugins are named {loaded.name!r}")
            names.add(loaded.name)
            self.plugins.append(loaded)
        errors += self._check_plugin_sections(names)
        if errors:
            raise ConfigError("\n".join(errors))
        # pluggy calls LIFO; we run our own ordered runner, but register in reverse anyway so a
        # plain pm.hook call would also follow the configured order.
        for loaded in reversed(self.plugins):
            try:
                self.pm.register(loaded.instance, name=loaded.name)
            except pluggy.PluginValidationError as exc:
                raise ConfigError(f"plugin {loaded.name}: {exc}") from None
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            who = self.pm.get_name(exc.plugin) or type(exc.plugin).__name__
            problem = str(exc).split(" in plugin ")[0]  # pluggy appends the instance's repr
            raise ConfigError(
                f"plugin {who}: {problem} (hooks: {', '.join(hookspecs.ALL_PHASES)})"
            ) from None
        self._check_signers()

    def _check_class(self, obj: Any, source: str) -> tuple[str, list[str]]:
        """The plugin's name and hook methods; :class:`ConfigError` if it is not a plugin class."""
        if not inspect.isclass(obj):
            raise ConfigError(f"plugin from {source} is not a class: {obj!r}")
        name = getattr(obj, "name", "")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"plugin class {obj.__qualname__} ({source}) has no name")
        hooks = _hook_names(obj)
        stray = [
            n
            for n, v in inspect.getmembers(obj)
            if n.startswith("on_") and callable(v) and n not in hookspecs.ALL_PHASES
        ]
        if stray:
            raise ConfigError(f"plugin {name}: unknown hook {stray[0]!r} (hooks: {', '.join(hookspecs.ALL_PHASES)})")
        unmarked = [n for n in hookspecs.ALL_PHASES if callable(getattr(obj, n, None)) and n not in hooks]
        if unmarked:  # would silently never run
            raise ConfigError(f"plugin {name}: method {unmarked[0]} is not marked @hookimpl")
        return name, hooks

    def _instantiate(self, obj: Any, source: str, env: PluginEnv, name: str, hooks: list[str]) -> LoadedPlugin:
        cfg_model = getattr(obj, "Config", PluginConfig)
        raw_cfg = self.config.plugins.get(name, {})
        try:
            cfg = validate_strict(cfg_model, raw_cfg)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(
                self.config.source, exc, prefix=f"plugins.{name}", origins=self.config.overrides)) from None
        try:
            factory: Any = obj  # any class taking (config, env); mypy narrowed it to type[object]
            instance = factory(cfg, env)
        except ConfigError:
            raise
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{self.config.source}: plugins.{name}: {exc}") from None
        except Exception as exc:  # a plugin that cannot start is a start-up error, not a traceback
            raise ConfigError(f"{self.config.source}: plugins.{name}: cannot start: {type(exc).__name__}: {exc}") from None
        return LoadedPlugin(
            name=name,
            instance=instance,
            source=source,
            version=str(getattr(obj, "version", "0")),
            feature=getattr(obj, "feature", None),
            hooks=hooks,
            seals_message=bool(getattr(obj, "seals_message", False)),
            feature_default=getattr(obj, "feature_default", None),
            verp_sender=bool(getattr(obj, "verp_sender", False)),
        )

    def _check_plugin_sections(self, names: set[str]) -> list[str]:
        known = names | set(BUILTINS) | set(_entry_points())
        return [f"{self.config.source}: plugins.{section}: no plugin has this name"
                for section in self.config.plugins if section not in known]

    def _check_signers(self) -> None:
        signer: str | None = None
        for p in self.plugins:
            if signer and "on_sign" in p.hooks:
                raise ConfigError(
                    f"{self.config.source}: chain.plugins: {p.name} would change the message after "
                    f"{signer} signs it; put signers last"
                )
            if p.seals_message and "on_sign" in p.hooks:
                signer = p.name

    def order(self, phase: str) -> list[LoadedPlugin]:
        """The plugins implementing ``phase``, in run order."""
        return [p for p in self.plugins if phase in p.hooks]
