"""Configuration: embedded defaults, precise errors (file, key, problem), secrets, check-config."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.app.cli import main
from pipeline.chain.loader import PluginSet, feature_registry
from pipeline.config import Config, ConfigError, load_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def write(tmp_path: Path, text: str, name: str = "smtpgate.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def switches(cfg: Config) -> dict[str, bool]:
    """Each switch's default for this config: the plugins' own, overridden by [features]."""
    return feature_registry(cfg).defaults


def test_no_file_needed_the_defaults_are_complete(monkeypatch):
    monkeypatch.delenv("SMTPGATE_CONFIG", raising=False)
    cfg = load_config(None)
    assert cfg.source == "<defaults>"
    assert cfg.chain.plugins[0] == "header_validation" and cfg.chain.plugins[-1] == "dkim_sign"
    assert cfg.features == {}  # each plugin declares its switch's default; [features] only overrides
    assert switches(cfg)["trackclicks"] is True and switches(cfg)["trackbounces"] is False
    assert cfg.limits.max_message_size == 25 * 1024 * 1024
    assert [li.port for li in cfg.listeners] == [2525, 4650]
    assert Config().chain.timeout == 10.0


def test_smtpgate_config_environment_variable_names_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "[limits]\nmax_recipients = 7\n")
    monkeypatch.setenv("SMTPGATE_CONFIG", str(path))
    cfg = load_config()
    assert cfg.limits.max_recipients == 7
    assert cfg.source == str(path)


def test_data_dir_environment_variable_applies_unless_the_file_sets_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTPGATE_DATA_DIR", str(tmp_path / "envdata"))
    assert load_config(write(tmp_path, "")).data_dir == tmp_path / "envdata"
    assert load_config(write(tmp_path, '[gateway]\ndata_dir = "/srv/x"\n')).data_dir == Path("/srv/x")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[gateway]\nhostnme = "mx"\n', "gateway.hostnme: unknown key"),
        ('[gatway]\nhostname = "mx"\n', "gatway: unknown key"),
        ("[[listeners]]\nport = 25\ntsl = 'none'\n", "listeners[0].tsl: unknown key"),
        ('[[credentials]]\nname = "a"\nsecert = "x"\n', "credentials[0].secert: unknown key"),
    ],
)
def test_unknown_key_names_the_file_and_the_key(tmp_path, toml, expected):
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {expected}"


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ('[limits]\nmax_recipients = "many"\n', "limits.max_recipients", "valid integer"),
        ("[limits]\nmax_recipients = 0\n", "limits.max_recipients", "greater than 0"),
        ("[[listeners]]\nport = 70000\n", "listeners[0].port", "less than or equal to 65535"),
        (
            "[[listeners]]\nport = 25\ntls = 'sometimes'\n",
            "listeners[0].tls",
            "'none', 'starttls' or 'implicit'",
        ),
        ("[chain]\nplugins = 'css_inline'\n", "chain.plugins", "valid array"),
        ("[features]\ntrackopens = 'maybe'\n", "features.trackopens", "valid boolean"),
    ],
)
def test_bad_value_names_the_file_the_key_and_the_problem(tmp_path, toml, key, problem):
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {key}: ")
    assert problem in str(err.value)


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    path = write(tmp_path, '[limits]\nmax_recipients = "x"\nmax_connections = -1\n[gateway]\nnope = 1\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_invalid_toml_missing_file_and_bad_encoding(tmp_path):
    bad = write(tmp_path, "[limits\nmax_recipients = 1\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: invalid TOML: "):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[gateway]\nhostname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(latin)


def test_naming_one_feature_keeps_the_other_defaults(tmp_path):
    """Regression: ``[features] trackopens = false`` used to switch off validation and DKIM too."""
    cfg = load_config(write(tmp_path, "[features]\ntrackopens = false\n"))
    assert switches(cfg) == {**switches(Config()), "trackopens": False}
    assert switches(cfg)["validate"] is True and switches(cfg)["dkim"] is True


def test_secrets_come_from_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTPGATE_TEST_RELAY_PASSWORD", "s3cret")
    cfg = load_config(write(tmp_path, '[egress]\npassword = "env:SMTPGATE_TEST_RELAY_PASSWORD"\n'))
    assert cfg.egress.password == "s3cret"


def test_missing_environment_variable_is_an_error_naming_key_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("SMTPGATE_TEST_UNSET", raising=False)
    path = write(tmp_path, '[tracking.keys]\nk1 = "env:SMTPGATE_TEST_UNSET"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: tracking.keys.k1: environment variable SMTPGATE_TEST_UNSET is not set"


def test_secrets_come_from_files_stripped(tmp_path):
    secret = tmp_path / "relay.pass"
    secret.write_text("from-a-file\n")
    cfg = load_config(write(tmp_path, f'[egress]\npassword = "file:{secret}"\n'))
    assert cfg.egress.password == "from-a-file"


def test_missing_secret_file_is_an_error_naming_key_and_file(tmp_path):
    path = write(tmp_path, f'[[credentials]]\nname = "app"\nsecret = "file:{tmp_path}/nope"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(
        f"{path}: credentials[0].secret: cannot read secret file {tmp_path}/nope"
    )


def test_feature_switch_names_are_case_insensitive(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            """
            [features]
            TrackOpens = false
            [[credentials]]
            name = "shop"
            features = { InlineCSS = false }
            locked = ["TrackClicks"]
            """,
        )
    )
    assert cfg.features["trackopens"] is False
    assert "TrackOpens" not in cfg.features
    assert switches(cfg)["trackclicks"] is True  # the switches not named keep their defaults
    assert cfg.credentials[0].features == {"inlinecss": False}
    assert cfg.credentials[0].locked == ["trackclicks"]


# ------------------------------------------------------------------------------------------------
# smtpgate check-config
# ------------------------------------------------------------------------------------------------


def test_check_config_prints_ok_and_a_summary(tmp_path, data_dir):
    path = write(
        tmp_path,
        """
        [chain]
        plugins = ["header_validation", "css_inline"]
        [features]
        inlinecss = false
        [[credentials]]
        name = "shop"
        """,
    )
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"OK: {path}\n")
    assert "chain (2): header_validation, css_inline" in result.output
    assert "features on: validate; off: inlinecss" in result.output
    assert "credentials: shop" in result.output


def test_check_config_with_embedded_defaults_loads_the_default_chain(data_dir, monkeypatch):
    monkeypatch.delenv("SMTPGATE_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["check-config"])
    assert result.exit_code == 0, result.output
    assert "OK: <defaults>" in result.output


def test_check_config_prints_every_error_and_exits_2(tmp_path):
    path = write(tmp_path, '[limits]\nmax_recipients = "x"\n[gateway]\nnope = 1\n')
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"{path}: limits.max_recipients:" in result.output
    assert f"{path}: gateway.nope: unknown key" in result.output
    assert "OK" not in result.output


def test_check_config_catches_plugin_errors_and_missing_tls_files(tmp_path, data_dir):
    path = write(tmp_path, '[plugins.css_inline]\nengin = "fast"\n')
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert f"{path}: plugins.css_inline.engin: unknown key" in result.output
    path = write(tmp_path, f'[tls]\ncert_file = "{tmp_path}/cert.pem"\n', "tls.toml")
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert f"tls.cert_file: file {tmp_path}/cert.pem not found" in result.output


def test_the_example_in_docs_configuration_md_is_valid(tmp_path, monkeypatch):
    example = re.search(r"^## Example\n.*?^```toml\n(.*?)^```", DOC.read_text(), re.M | re.S)
    assert example, "docs/configuration.md has no ```toml example under ## Example"
    secret = tmp_path / "relay_password"
    secret.write_text("pw\n")
    text = example.group(1).replace("/run/secrets/relay_password", str(secret))
    text = text.replace('data_dir = "/var/lib/smtpgate"', f'data_dir = "{tmp_path / "data"}"')
    monkeypatch.setenv("SHOP_API_KEY", "k")
    monkeypatch.setenv("TRACKING_KEY", "t" * 32)
    cfg = load_config(write(tmp_path, text))
    assert cfg.egress.password == "pw" and cfg.tracking.keys == {"k1": "t" * 32}
    assert switches(cfg)["trackopens"] is False and switches(cfg)["dkim"] is True
    assert [p.name for p in PluginSet(cfg).plugins] == cfg.chain.plugins


# ------------------------------------------------------------------------------------------------
# strict types, environment overrides, every error in one run, instance discovery
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ('[features]\ntrackopens = "yes"\n', "features.trackopens", "valid boolean"),
        ("[features]\ninlinecss = 1\n", "features.inlinecss", "valid boolean"),
        ('[[listeners]]\nport = "34025"\n', "listeners[0].port", "valid integer"),
        ('[spool]\nbounce_notices = "false"\n', "spool.bounce_notices", "valid boolean"),
        ('[plugins.css_inline]\ncache_size = "10"\n', "plugins.css_inline.cache_size", "valid integer"),
    ],
)
def test_values_of_the_wrong_type_are_errors_not_converted(tmp_path, data_dir, toml, key, problem):
    path = write(tmp_path, toml)
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    [line] = [x for x in result.stderr.splitlines() if f": {key}: " in x]
    assert line.startswith(f"smtpgate: config error: {path}: {key}: ") and problem in line


def test_numbers_of_seconds_may_be_integers_and_paths_strings(tmp_path):
    cfg = load_config(write(tmp_path, '[chain]\ntimeout = 5\n[tls]\ncert_file = "/x/cert.pem"\n'))
    assert cfg.chain.timeout == 5.0 and cfg.tls.cert_file == Path("/x/cert.pem")


def test_check_config_prints_a_core_typo_two_plugin_typos_and_a_string_bool_in_one_run(tmp_path, data_dir):
    path = write(tmp_path, """
        [gateway]
        hostnme = "mx.example.com"
        [features]
        trackopens = "yes"
        [plugins.css_inline]
        engin = "css_inline"
        [plugins.click_tracking]
        base_ur = "https://t.example.com"
        """)
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = result.stderr.splitlines()
    assert errors == [
        f"smtpgate: config error: {path}: gateway.hostnme: unknown key",
        f"smtpgate: config error: {path}: features.trackopens: Input should be a valid boolean",
        f"smtpgate: config error: {path}: plugins.css_inline.engin: unknown key",
        f"smtpgate: config error: {path}: plugins.click_tracking.base_ur: unknown key",
    ]


def test_plugin_typos_are_all_reported_when_the_core_is_valid(tmp_path, data_dir):
    path = write(tmp_path, '[plugins.css_inline]\nengin = "x"\n[plugins.open_pixel]\nsize = 2\n')
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert f"{path}: plugins.css_inline.engin: unknown key" in result.stderr
    assert f"{path}: plugins.open_pixel.size: unknown key" in result.stderr


def test_every_key_can_come_from_the_environment_and_check_config_names_the_variable(tmp_path, monkeypatch, data_dir):
    path = write(tmp_path, '[gateway]\nhostname = "file.example.com"\n')
    monkeypatch.setenv("SMTPGATE_GATEWAY__HOSTNAME", "env.example.com")
    monkeypatch.setenv("SMTPGATE_LISTENERS__0__PORT", "2587")
    monkeypatch.setenv("SMTPGATE_FEATURES__TRACKOPENS", "false")
    monkeypatch.setenv("SMTPGATE_PLUGINS__CSS_INLINE__ENGINE", "css_inline")
    monkeypatch.setenv("SMTPGATE_RELAY__LOCAL_DOMAINS", '["a.example", "b.example"]')
    cfg = load_config(path)
    assert cfg.gateway.hostname == "env.example.com"
    assert [li.port for li in cfg.listeners] == [2587, 4650]  # the default listeners, the first one changed
    assert cfg.features["trackopens"] is False and cfg.plugins["css_inline"] == {"engine": "css_inline"}
    assert cfg.relay.local_domains == ["a.example", "b.example"]
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "from the environment: gateway.hostname = $SMTPGATE_GATEWAY__HOSTNAME" in result.stdout
    assert "from the environment: listeners[0].port = $SMTPGATE_LISTENERS__0__PORT" in result.stdout


def test_a_bad_environment_override_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTPGATE_GATEWAY__LOG_FORMAT", "xml")
    monkeypatch.setenv("SMTPGATE_GATEWAY__HOSTNME", "x")
    monkeypatch.setenv("SMTPGATE_LISTENERS__5__PORT", "25")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, ""))
    lines = str(err.value).splitlines()
    assert "$SMTPGATE_LISTENERS__5__PORT: listeners[5].port: no list item 5 to override" in lines
    assert "$SMTPGATE_GATEWAY__LOG_FORMAT: gateway.log_format: Input should be 'text' or 'json'" in lines
    assert "$SMTPGATE_GATEWAY__HOSTNME: gateway.hostnme: unknown key" in lines


def test_commands_find_smtpgate_toml_in_the_working_directory_then_etc(tmp_path, monkeypatch):
    import pipeline.config.base as config_module
    from pipeline.config import find_config

    monkeypatch.delenv("SMTPGATE_CONFIG", raising=False)
    monkeypatch.delenv("SMTPGATE_DATA_DIR", raising=False)
    system = write(tmp_path, '[gateway]\nhostname = "etc.example.com"\n', "etc.toml")
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", system)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert find_config() == system and load_config().gateway.hostname == "etc.example.com"
    assert load_config().data_dir == tmp_path / "smtpgate-data"  # relative to the file, not the cwd
    write(here, '[gateway]\nhostname = "cwd.example.com"\n')
    assert load_config().gateway.hostname == "cwd.example.com"
    monkeypatch.setenv("SMTPGATE_CONFIG", str(system))
    assert load_config().gateway.hostname == "etc.example.com"


def test_a_read_command_without_a_data_directory_says_so_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("SMTPGATE_CONFIG", raising=False)
    monkeypatch.setenv("SMTPGATE_DATA_DIR", str(tmp_path / "nothing"))
    for args in (["queue", "list"], ["status"], ["stats"], ["credentials", "list"], ["suppression", "list"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, args
        assert f"no instance: data directory {tmp_path / 'nothing'} does not exist" in result.stderr
        assert not (tmp_path / "nothing").exists()
