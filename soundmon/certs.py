"""A self-hosted certificate authority for mosquitto's TLS listener (``soundmon certs``).

Devices and services check the broker against ``ca.crt``; mosquitto presents ``server.crt``
(signed by that CA, with the names and addresses clients use in its subjectAltName) and keeps
``server.key``. Keys are ECDSA P-256: mbedTLS on the ESP32 and every desktop TLS stack speak
it, and a handshake costs the board far less than with RSA.

Running the command again reuses the CA (devices keep trusting it) and re-issues the server
certificate only when its names changed, it is close to expiry, or ``--renew`` is given.

Errors: ``CertError`` (a bad host name or address, an unreadable existing file).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650  # the CA is installed on every device: make it outlive them
SERVER_DAYS = 825  # the longest server lifetime common TLS clients accept
RENEW_BEFORE_DAYS = 30


class CertError(ValueError):
    """A host name or address that cannot go into a certificate, or an unreadable file."""


@dataclass(frozen=True)
class CertFiles:
    """The four files in the output directory."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, private: bool) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def split_names(hosts: list[str]) -> list[x509.GeneralName]:
    """subjectAltName entries: IP addresses as IPAddress, everything else as a DNS name."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        label_ok = all(part and len(part) <= 63 and part.replace("-", "").replace("*", "").isalnum()
                       for part in host.split("."))
        if not label_ok:
            raise CertError(f"{host!r} is neither an IP address nor a DNS name")
        names.append(x509.DNSName(host.lower()))
    if not names:
        raise CertError("give at least one --host (a DNS name or an IP address)")
    return names


def make_ca(common_name: str = "soundmon CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     names: list[x509.GeneralName],
                     days: int = SERVER_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    first = names[0].value
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first))]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=True, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _san(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    return {str(n.value) for n in ext.value}


def ensure_certs(out: Path, hosts: list[str], renew: bool = False,
                 days: int = SERVER_DAYS) -> dict[str, object]:
    """Create the CA if missing, and a server certificate for ``hosts`` if needed.

    Returns what happened: ``{"ca": "created"|"kept", "server": "issued"|"kept", "names": [...]}``.
    """
    names = split_names(hosts)
    files = CertFiles(out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {"names": [str(n.value) for n in names]}
    try:
        if files.ca_cert.exists() and files.ca_key.exists():
            ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
            ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
            if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
                raise CertError(f"{files.ca_key} is not an EC key made by soundmon certs")
            result["ca"] = "kept"
        else:
            ca_key, ca_cert = make_ca()
            _write(files.ca_key, _key_pem(ca_key), private=True)
            _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
            result["ca"] = "created"
        current = (x509.load_pem_x509_certificate(files.server_cert.read_bytes())
                   if files.server_cert.exists() and files.server_key.exists() else None)
    except (OSError, ValueError) as exc:
        if isinstance(exc, CertError):
            raise
        raise CertError(f"cannot read the existing files in {out}: {exc}") from exc
    fresh = (current is not None and not renew
             and result["ca"] == "kept"
             and current.issuer == ca_cert.subject
             and _san(current) == set(result["names"])  # type: ignore[arg-type]
             and current.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_BEFORE_DAYS))
    if fresh:
        result["server"] = "kept"
        return result
    key, cert = make_server_cert(ca_key, ca_cert, names, days)
    _write(files.server_key, _key_pem(key), private=True)
    _write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    result["server"] = "issued"
    return result


@click.command("certs")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for ca.crt, ca.key, server.crt and server.key.")
@click.option("--host", "hosts", multiple=True, required=True,
              help="A DNS name or IP address devices use to reach the broker (repeat it).")
@click.option("--days", type=click.IntRange(1, SERVER_DAYS), default=SERVER_DAYS, show_default=True,
              help="Validity of the server certificate.")
@click.option("--renew", is_flag=True, help="Issue a new server certificate even if it is current.")
def certs_command(out: Path, hosts: tuple[str, ...], days: int, renew: bool) -> None:
    """Create a private CA and a TLS server certificate for mosquitto.

    Copy ca.crt (never ca.key) to each device; mosquitto uses server.crt and server.key.
    Running it again keeps the CA, so devices keep working.
    """
    try:
        result = ensure_certs(out, list(hosts), renew=renew, days=days)
    except CertError as err:
        raise click.UsageError(str(err)) from err
    click.echo(f"CA:     {CertFiles(out).ca_cert} ({result['ca']})")
    click.echo(f"server: {CertFiles(out).server_cert} ({result['server']}) for "
               f"{', '.join(result['names'])}")  # type: ignore[arg-type]
