#!/usr/bin/env python3
"""MinIO's TLS material in its --certs-dir layout: a private CA (CAs/ca.crt) and a server certificate
(public.crt, private.key) for the given host names and addresses, ECDSA P-256, signed by that CA.

Used by the minio role (run on the Ansible controller, whose Python has `cryptography` as a dependency of
ansible-core) and by docker-compose.yml (a one-shot service). Idempotent: existing files are kept while they cover
the same names and stay valid for at least 30 more days; prints "kept" or "created".

    make_certs.py --out DIR --hosts minio,localhost,127.0.0.1 [--days 825]
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def names_of(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def still_good(out: Path, hosts: list[str]) -> bool:
    paths = [out / "public.crt", out / "private.key", out / "CAs" / "ca.crt"]
    if not all(p.is_file() for p in paths):
        return False
    try:
        cert = x509.load_pem_x509_certificate(paths[0].read_bytes())
        ca = x509.load_pem_x509_certificate(paths[2].read_bytes())
        cert.verify_directly_issued_by(ca)
    except (ValueError, x509.ExtensionNotFound, TypeError):
        return False
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    return names_of(cert) == {str(h) for h in hosts} and cert.not_valid_after_utc > soon and ca.not_valid_after_utc > soon


def write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def create(out: Path, hosts: list[str], days: int) -> None:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "speedprofile MinIO CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(san_entries(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    write(out / "private.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
    write(out / "public.crt", cert.public_bytes(pem), 0o644)
    write(out / "CAs" / "ca.crt", ca.public_bytes(pem), 0o644)
    # The CA's own key is not kept: new names mean a new CA, which every client picks up from CAs/ca.crt.


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="MinIO certs dir to fill (public.crt, private.key, CAs/ca.crt)")
    p.add_argument("--hosts", required=True, help="comma-separated DNS names and IP addresses of the server")
    p.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    args = p.parse_args(argv)
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if not hosts:
        p.error("--hosts names no host")
    out = Path(args.out)
    if still_good(out, hosts):
        print(f"kept certificates in {out}")
        return 0
    create(out, hosts, args.days)
    print(f"created certificates in {out} for {', '.join(hosts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
