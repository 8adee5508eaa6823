"""``smtpgate dkim keygen``: key file, mode, refusal to overwrite, and a DNS record that really verifies."""

from __future__ import annotations

import os
import re
import stat

import dkim
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from pipeline.app.cli import main
from pipeline.chain.driver import run_chain
from plugins.dkim_sign import dns_txt_value, split_txt, zone_record
from tests.support import complete_message

MESSAGE = complete_message(sender="a@example.com", to="b@example.org", subject="hi", content_type="text/plain", body="hello\r\n")


def keygen(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["dkim", "keygen", *args])
    return result.exit_code, result.stdout, result.stderr


def parse_record(stdout: str) -> tuple[str, list[str]]:
    """(owner name, character-strings) of the printed zone-file record."""
    m = re.fullmatch(r'(\S+) IN TXT \( ((?:"[^"]*" ?)+)\)\n', stdout)
    assert m, stdout
    return m.group(1), re.findall(r'"([^"]*)"', m.group(2))


def test_rsa_key_is_written_0600_under_the_data_dir_and_its_record_verifies(data_dir):
    code, out, err = keygen("--domain", "Example.COM", "--selector", "s1")
    assert code == 0, err
    path = data_dir / "dkim" / "example.com.s1.rsa.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    name, strings = parse_record(out)
    assert name == "s1._domainkey.example.com."
    assert len(strings) == 2 and all(len(s.encode()) <= 255 for s in strings)
    assert "".join(strings) == dns_txt_value(key)
    assert "".join(strings).startswith("v=DKIM1; k=rsa; p=")
    assert f'key_file = "{path.resolve()}"' in err

    # The key signs through the plugin and the printed record verifies the signature.
    cfg = {"plugins": {"dkim_sign": {"domains": {"example.com": {"selector": "s1", "key_file": str(path)}}}}}
    signed = run_chain(MESSAGE, ["dkim_sign"], config=cfg).copies[0].data
    record = "".join(strings).encode()
    assert dkim.verify(
        signed, dnsfunc=lambda n, timeout=5: record if n == b"s1._domainkey.example.com." else b""
    )


def test_ed25519_key_and_record(tmp_path):
    code, out, err = keygen(
        "--domain", "example.com", "--selector", "ed1", "--type", "ed25519", "--out", str(tmp_path)
    )
    assert code == 0, err
    path = tmp_path / "example.com.ed1.ed25519.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    name, strings = parse_record(out)
    assert name == "ed1._domainkey.example.com."
    assert strings == [dns_txt_value(key)] and strings[0].startswith("v=DKIM1; k=ed25519; p=")
    assert 'ed25519_key_file = "' in err and 'ed25519_selector = "ed1"' in err


def test_existing_key_is_refused_without_force_and_replaced_with_it(tmp_path):
    assert keygen("--domain", "example.com", "--selector", "s1", "--out", str(tmp_path))[0] == 0
    path = tmp_path / "example.com.s1.rsa.pem"
    before = path.read_bytes()
    code, out, err = keygen("--domain", "example.com", "--selector", "s1", "--out", str(tmp_path))
    assert code == 1 and out == ""
    assert err == f"smtpgate: {path} already exists; use --force to replace it\n"
    assert path.read_bytes() == before
    path.chmod(0o644)
    code, out, err = keygen("--domain", "example.com", "--selector", "s1", "--out", str(tmp_path), "--force")
    assert code == 0, err
    assert path.read_bytes() != before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_data_dir_comes_from_the_config_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SMTPGATE_DATA_DIR", raising=False)
    config = tmp_path / "smtpgate.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "gwdata"}"\n')
    code, _, err = keygen("--domain", "example.org", "--selector", "k1", "--config", str(config))
    assert code == 0, err
    assert (tmp_path / "gwdata" / "dkim" / "example.org.k1.rsa.pem").is_file()


def test_bad_arguments_give_a_one_line_error_without_traceback(tmp_path):
    code, out, err = keygen("--domain", "not a domain", "--selector", "s1", "--out", str(tmp_path))
    assert code == 2 and "Invalid value for --domain: 'not a domain' is not a domain name" in err
    assert "Traceback" not in err
    code, _, err = keygen("--domain", "example.com", "--selector", "s 1", "--out", str(tmp_path))
    assert code == 2 and "'s 1' is not a valid selector" in err
    code, _, err = keygen(
        "--domain", "example.com", "--selector", "s1", "--type", "dsa", "--out", str(tmp_path)
    )
    assert code == 2 and "--type" in err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = keygen("--domain", "example.com", "--selector", "s1", "--out", str(blocker / "sub"))
    assert code == 1 and out == ""
    assert err.startswith(f"smtpgate: cannot write {blocker / 'sub' / 'example.com.s1.rsa.pem'}: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_long_values_are_split_into_255_byte_strings():
    value = "v=DKIM1; k=rsa; p=" + "A" * 700
    parts = split_txt(value)
    assert [len(p) for p in parts] == [255, 255, 208] and "".join(parts) == value
    assert zone_record("s._domainkey.example.com", "abc") == 's._domainkey.example.com. IN TXT ( "abc" )'


def test_keys_written_by_keygen_have_no_group_or_other_bits_even_with_a_lax_umask(tmp_path):
    old = os.umask(0)
    try:
        assert keygen("--domain", "example.com", "--selector", "s1", "--out", str(tmp_path / "new"))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "example.com.s1.rsa.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


def test_generate_key_is_a_plain_function_reachable_without_importing_the_plugin(tmp_path):
    """``smtpgate init`` (core) resolves the plugin by name and calls its keygen: no import arrow."""
    from pipeline.chain.loader import resolve

    dkim_sign, _ = resolve("dkim_sign")
    path, record = dkim_sign.generate_key("Example.com", "s2", tmp_path, "ed25519")
    assert path == tmp_path / "example.com.s2.ed25519.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert record == zone_record("s2._domainkey.example.com", dns_txt_value(key))
    with pytest.raises(FileExistsError):
        dkim_sign.generate_key("example.com", "s2", tmp_path, "ed25519")
    with pytest.raises(ValueError, match="not a domain name"):
        dkim_sign.generate_key("localhost", "s2", tmp_path)
