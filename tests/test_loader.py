"""Plugin loading: built-ins, a real entry point, a file, ``module:Class``; and every start-up error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import MessageContext, Plugin, PluginConfig, hookimpl
from pipeline.app.cli import main
from pipeline.chain.driver import make_config, run_chain
from pipeline.chain.loader import BUILTINS, ENTRY_POINT_GROUP, PluginSet, resolve
from pipeline.config import ConfigError, load_config
from tests.support import SAMPLES

RAW = (SAMPLES / "01-plain-text.eml").read_bytes()

PLUGIN_SOURCE = """
from pipeline import Plugin, PluginConfig, hookimpl


class {cls}(Plugin):
    name = "{name}"
    version = "{version}"

    class Config(PluginConfig):
        value: str = "hello"

    @hookimpl
    def on_message(self, ctx):
        ctx.message.add_header("X-{cls}", self.config.value)
"""


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "smtpgate.toml"
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------


def test_every_builtin_resolves_to_a_named_plugin_class():
    for name in BUILTINS:
        cls, source = resolve(name)
        assert source == "built-in"
        assert cls.name == name


@pytest.fixture
def installed_distribution(tmp_path, monkeypatch):
    """A real installed distribution (a ``.dist-info`` with METADATA and entry_points.txt) on sys.path,
    found through importlib.metadata like any pip-installed plugin."""
    site = tmp_path / "site"
    site.mkdir()
    source = PLUGIN_SOURCE.format(cls="AcmeStamp", name="acme_stamp", version="0").replace(
        '    version = "0"\n', ""
    )
    (site / "acme_smtpgate_plugin.py").write_text(source)  # no version of its own: the package's applies
    info = site / "acme_smtpgate_plugin-2.5.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-smtpgate-plugin\nVersion: 2.5.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nacme_stamp = acme_smtpgate_plugin:AcmeStamp\n"
    )
    (info / "RECORD").write_text("")
    monkeypatch.syspath_prepend(str(site))
    yield site
    import sys

    sys.modules.pop("acme_smtpgate_plugin", None)


def test_plugin_from_an_entry_point_is_found_by_name_and_runs(installed_distribution):
    cfg = make_config({"plugins": {"acme_stamp": {"value": "from-ep"}}}, plugins=["acme_stamp"])
    plugins = PluginSet(cfg)
    (loaded,) = plugins.plugins
    assert loaded.source == "entry point (acme-smtpgate-plugin)"
    assert loaded.hooks == ["on_message"]
    result = run_chain(RAW, config=cfg)
    assert b"X-AcmeStamp: from-ep\r\n" in result.copies[0].data


def test_plugin_from_a_file_path(tmp_path):
    path = tmp_path / "stamp.py"
    path.write_text(PLUGIN_SOURCE.format(cls="FileStamp", name="file_stamp", version="1.0"))
    cfg = make_config(plugins=[str(path)])
    (loaded,) = PluginSet(cfg).plugins
    assert (loaded.name, loaded.source, loaded.version) == ("file_stamp", f"file {path}", "1.0")
    assert b"X-FileStamp: hello\r\n" in run_chain(RAW, config=cfg).copies[0].data


def test_file_with_several_plugins_needs_a_class_name(tmp_path):
    path = tmp_path / "two.py"
    path.write_text(
        PLUGIN_SOURCE.format(cls="One", name="one", version="1")
        + PLUGIN_SOURCE.format(cls="Two", name="two", version="1").split("\n", 2)[2]
    )
    with pytest.raises(ConfigError, match="defines 2 plugin classes; name one as"):
        PluginSet(make_config(plugins=[str(path)]))
    (loaded,) = PluginSet(make_config(plugins=[f"{path}:Two"])).plugins
    assert loaded.name == "two"
    with pytest.raises(ConfigError, match="has no class Three"):
        PluginSet(make_config(plugins=[f"{path}:Three"]))


def test_plugin_file_errors_are_one_line_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        PluginSet(make_config(plugins=[str(tmp_path / "missing.py")]))
    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n")
    with pytest.raises(ConfigError, match=r"broken\.py: SyntaxError"):
        PluginSet(make_config(plugins=[str(broken)]))


def test_plugin_from_module_and_class(tmp_path, monkeypatch):
    (tmp_path / "house_plugins.py").write_text(
        PLUGIN_SOURCE.format(cls="HouseStamp", name="house", version="3")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = make_config(plugins=["house_plugins:HouseStamp"])
    (loaded,) = PluginSet(cfg).plugins
    assert (loaded.name, loaded.source) == ("house", "module house_plugins")
    assert b"X-HouseStamp: hello" in run_chain(RAW, config=cfg).copies[0].data
    with pytest.raises(ConfigError, match="cannot import house_plugins:Nope"):
        PluginSet(make_config(plugins=["house_plugins:Nope"]))
    with pytest.raises(ConfigError, match="cannot import no_such_module:X"):
        PluginSet(make_config(plugins=["no_such_module:X"]))


def test_unknown_plugin_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown plugin 'css_inlne' \(known: .*css_inline"):
        PluginSet(make_config(plugins=["css_inlne"]))


def test_builtin_that_cannot_be_imported_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(BUILTINS, "ghost", "plugins.ghost_does_not_exist:Ghost")
    with pytest.raises(ConfigError, match="built-in plugin 'ghost' cannot be loaded"):
        PluginSet(make_config(plugins=["ghost"]))


# ------------------------------------------------------------------------------------------------
# Start-up errors
# ------------------------------------------------------------------------------------------------


def test_misspelled_hook_name_is_a_start_up_error():
    class Typo(Plugin):
        name = "typo"

        @hookimpl
        def on_mesage(self, ctx: MessageContext) -> None:
            return None

    with pytest.raises(ConfigError, match="plugin typo: unknown hook 'on_mesage'"):
        PluginSet(make_config(), [Typo])


def test_misspelled_hook_without_the_on_prefix_is_caught_by_check_pending():
    class Typo2(Plugin):
        name = "typo2"

        @hookimpl
        def transform(self, ctx: MessageContext) -> None:
            return None

    with pytest.raises(ConfigError, match="plugin typo2: unknown hook 'transform'"):
        PluginSet(make_config(), [Typo2])


def test_hook_method_without_hookimpl_is_a_start_up_error():
    """It would otherwise never run, silently."""

    class Unmarked(Plugin):
        name = "unmarked"

        def on_transform(self, ctx: MessageContext) -> None:
            return None

    with pytest.raises(ConfigError, match="plugin unmarked: method on_transform is not marked @hookimpl"):
        PluginSet(make_config(), [Unmarked])


def test_hook_argument_that_is_not_in_the_spec_is_a_start_up_error():
    class BadArgs(Plugin):
        name = "bad_args"

        @hookimpl
        def on_message(self, ctx: MessageContext, recipient: str) -> None:
            return None

    with pytest.raises(ConfigError, match="plugin bad_args"):
        PluginSet(make_config(), [BadArgs])


def test_two_plugins_with_one_name_is_a_start_up_error(tmp_path):
    path = tmp_path / "dup.py"
    path.write_text(PLUGIN_SOURCE.format(cls="Dup", name="header_validation", version="1"))
    with pytest.raises(ConfigError, match="two plugins are named 'header_validation'"):
        PluginSet(make_config(plugins=["header_validation", str(path)]))


def test_unknown_plugin_config_key_names_file_and_key(tmp_path):
    plugin = tmp_path / "stamp.py"
    plugin.write_text(PLUGIN_SOURCE.format(cls="Stamp", name="stamp", version="1"))
    cfg_path = write_toml(
        tmp_path,
        f"""
        [chain]
        plugins = ["{plugin}"]
        [plugins.stamp]
        valeu = "typo"
        """,
    )
    with pytest.raises(ConfigError) as err:
        PluginSet(load_config(cfg_path))
    assert str(err.value) == f"{cfg_path}: plugins.stamp.valeu: unknown key"


def test_plugin_config_with_a_bad_type_names_the_key(tmp_path):
    class Typed(Plugin):
        name = "typed"

        class Config(PluginConfig):
            size: int = 1

        @hookimpl
        def on_message(self, ctx: MessageContext) -> None:
            return None

    with pytest.raises(ConfigError, match=r"<test>: plugins\.typed\.size: Input should be a valid integer"):
        PluginSet(make_config({"plugins": {"typed": {"size": "big"}}}), [Typed])


def test_config_section_for_a_plugin_nobody_has_is_an_error():
    with pytest.raises(ConfigError, match="plugins.css_inlien: no plugin has this name"):
        PluginSet(make_config({"plugins": {"css_inlien": {}}}))


def test_plugin_that_fails_to_start_is_a_config_error_naming_it():
    class Fragile(Plugin):
        name = "fragile"

        def __init__(self, config: PluginConfig, env: object) -> None:
            raise RuntimeError("key file unreadable")

        @hookimpl
        def on_message(self, ctx: MessageContext) -> None:
            return None

    with pytest.raises(ConfigError, match="plugins.fragile: cannot start: RuntimeError: key file unreadable"):
        PluginSet(make_config(), [Fragile])


def test_a_sign_hook_after_a_sealing_signer_is_a_start_up_error():
    class Signer(Plugin):
        name = "signer"
        seals_message = True

        @hookimpl
        def on_sign(self, ctx: MessageContext) -> None:
            ctx.message.seal()

    class LateSigner(Plugin):
        name = "late_signer"

        @hookimpl
        def on_sign(self, ctx: MessageContext) -> None:
            ctx.message.add_header("X-After", "1")

    class LateTracker(Plugin):
        name = "late_tracker"

        @hookimpl
        def on_personalize(self, ctx: MessageContext) -> None:
            return None

    with pytest.raises(ConfigError, match="late_signer would change the message after signer signs it"):
        PluginSet(make_config(), [Signer, LateSigner])
    PluginSet(make_config(), [LateSigner, Signer])  # signer last: fine
    PluginSet(make_config(), [Signer, LateTracker])  # personalize runs before sign anyway: fine


def test_not_a_class_and_nameless_plugins_are_refused():
    with pytest.raises(ConfigError, match="is not a class"):
        PluginSet(make_config(), [object()])

    class Nameless(Plugin):
        @hookimpl
        def on_message(self, ctx: MessageContext) -> None:
            return None

    with pytest.raises(ConfigError, match="has no name"):
        PluginSet(make_config(), [Nameless])


# ------------------------------------------------------------------------------------------------
# smtpgate plugins
# ------------------------------------------------------------------------------------------------


def test_plugins_command_lists_source_version_hooks_and_order_per_phase(tmp_path, installed_distribution):
    plugin = tmp_path / "stamp.py"
    plugin.write_text(
        PLUGIN_SOURCE.format(cls="Stamp", name="stamp", version="1.4")
        + "\n    @hookimpl\n    def on_transform(self, ctx):\n        return None\n"
    )
    cfg_path = write_toml(
        tmp_path,
        f"""
        [chain]
        plugins = ["header_validation", "{plugin}", "acme_stamp", "css_inline"]
        """,
    )
    result = CliRunner().invoke(main, ["plugins", "--config", str(cfg_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    stamp = next(line for line in lines if line.startswith("stamp "))
    assert f"file {plugin}" in stamp and "1.4" in stamp and "on_message, on_transform" in stamp
    acme = next(line for line in lines if line.startswith("acme_stamp "))
    assert "entry point (acme-smtpgate-plugin)" in acme and " 2.5.1 " in acme  # the distribution's version
    assert any(line.startswith("header_validation ") and "built-in" in line for line in lines)
    assert "  on_message      header_validation -> stamp -> acme_stamp" in lines
    assert "  on_transform    stamp -> css_inline" in lines
    assert "  on_connect      (none)" in lines


def test_plugins_command_reports_a_load_error_in_one_line(tmp_path):
    cfg_path = write_toml(tmp_path, '[chain]\nplugins = ["nope"]\n')
    result = CliRunner().invoke(main, ["plugins", "--config", str(cfg_path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "unknown plugin 'nope'" in result.output


# ------------------------------------------------------------------------------------------------
# What a plugin is given: its own config and a typed environment, never the gateway's Config
# ------------------------------------------------------------------------------------------------


def test_a_plugin_gets_the_facts_it_needs_through_its_environment(tmp_path):
    seen: dict[str, object] = {}

    class Curious(Plugin):
        name = "curious"
        feature = "curious"
        feature_default = False

        def __init__(self, config, env):
            super().__init__(config, env)
            seen.update(hostname=env.hostname, data_dir=env.data_dir, features=dict(env.features),
                        base=env.tracking_base_url, bounce=env.bounce_domain, has_config=hasattr(env, "config"))

        @hookimpl
        def on_message(self, ctx: MessageContext) -> None:
            return None

    cfg = make_config({
        "gateway": {"hostname": "gw.example", "data_dir": str(tmp_path)},
        "tracking": {"base_url": "https://t.example", "bounce_domain": "b.example"},
        "features": {"curious": True},
    }, plugins=["campaign_tag"])
    PluginSet(cfg, [Curious])
    assert seen == {"hostname": "gw.example", "data_dir": tmp_path, "features": {"campaign": True, "curious": True},
                    "base": "https://t.example", "bounce": "b.example", "has_config": False}


def test_the_tracking_key_is_made_only_when_a_plugin_signs(tmp_path):
    """``env.signer`` is opened on first use: a chain without tracking plugins writes no key file."""
    PluginSet(make_config({"gateway": {"data_dir": str(tmp_path)}}, plugins=["header_validation"]))
    assert not (tmp_path / "tracking.key").exists()
    PluginSet(make_config({"gateway": {"data_dir": str(tmp_path)}}, plugins=["open_pixel"]))
    assert (tmp_path / "tracking.key").is_file()
