"""A throwaway certificate authority for serving the stand-in endpoint over HTTPS: a CA,
a server certificate for the given hosts, and a Java trust store holding the CA, which
DATAHUB_SDK_TRUSTSTORE hands to the SDK's JVM."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from datahub_emulator.client import TlsFiles


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.touch(mode=0o600)
    path.write_bytes(pem)


def _subject_names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_test_tls(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[TlsFiles, Path]:
    """The endpoint's TLS files for `hosts`, and a PKCS12 trust store with their CA."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    valid = {"not_valid_before": now - dt.timedelta(minutes=5), "not_valid_after": now + dt.timedelta(days=2)}

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder(**valid)
        .subject_name(_name("datahub test CA"))
        .issuer_name(_name("datahub test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder(**valid)
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(cert=folder / "server.pem", key=folder / "server-key.pem", ca=folder / "ca.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(files.key, key)

    trust_store = folder / "truststore.p12"
    trust_store.unlink(missing_ok=True)
    # Certificates only, so no password protects it: the JVM reads it without one.
    subprocess.run(
        [
            "keytool", "-J-Dkeystore.pkcs12.certProtectionAlgorithm=NONE", "-J-Dkeystore.pkcs12.macAlgorithm=NONE",
            "-importcert", "-noprompt", "-alias", "datahub-test-ca", "-file", str(files.ca),
            "-keystore", str(trust_store), "-storetype", "PKCS12", "-storepass", "unused",
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return files, trust_store
