"""`soundmon certs`: a private CA and a server certificate that TLS clients accept."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from soundmon.certs import CertError, CertFiles, ensure_certs, split_names
from soundmon.cli import main


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_certificate_is_signed_by_the_ca_for_the_given_names(tmp_path: Path) -> None:
    """The server certificate verifies against ca.crt and names every host; keys are 0600."""
    result = ensure_certs(tmp_path, ["mqtt.example.org", "192.168.1.20"])
    files = CertFiles(tmp_path)
    ca, server = _load(files.ca_cert), _load(files.server_cert)
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example.org"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.168.1.20"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert result == {"names": ["mqtt.example.org", "192.168.1.20"], "ca": "created",
                      "server": "issued"}
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # Python's own TLS stack accepts the pair (it loads and matches key and certificate)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(files.server_cert, files.server_key)


def test_running_again_keeps_the_ca_and_reissues_only_on_change(tmp_path: Path) -> None:
    """Same names: nothing changes. New names or --renew: a new server cert, the same CA."""
    ensure_certs(tmp_path, ["a.example"])
    files = CertFiles(tmp_path)
    ca_before, server_before = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    assert ensure_certs(tmp_path, ["a.example"])["server"] == "kept"
    assert files.server_cert.read_bytes() == server_before
    assert ensure_certs(tmp_path, ["a.example", "b.example"])["server"] == "issued"
    assert ensure_certs(tmp_path, ["a.example", "b.example"], renew=True)["server"] == "issued"
    assert files.ca_cert.read_bytes() == ca_before
    _load(files.server_cert).verify_directly_issued_by(_load(files.ca_cert))


@pytest.mark.parametrize("bad", ["", "two words", "bad_underscore.example", "a..b"])
def test_bad_host_names_are_refused(bad: str) -> None:
    """Names that cannot be a DNS name or an IP address are a clear error."""
    with pytest.raises(CertError):
        split_names([bad])


def test_cli_prints_what_it_did_and_rejects_bad_names(tmp_path: Path) -> None:
    """`soundmon certs` reports created/kept, and a bad --host is a usage error (exit 2)."""
    runner = CliRunner()
    ok = runner.invoke(main, ["certs", "--out", str(tmp_path), "--host", "localhost"])
    assert ok.exit_code == 0 and "(created)" in ok.output and "(issued)" in ok.output
    again = runner.invoke(main, ["certs", "--out", str(tmp_path), "--host", "localhost"])
    assert "(kept)" in again.output
    bad = runner.invoke(main, ["certs", "--out", str(tmp_path), "--host", "no way"])
    assert bad.exit_code == 2 and "neither an IP address nor a DNS name" in bad.output
