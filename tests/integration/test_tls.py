"""HTTPS on the data and admin listeners, from certificate and key paths in the policy."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

# the HTTP a client sees must not tell the data listeners apart
pytestmark = pytest.mark.both_listeners


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "gw.crt", directory / "gw.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_data_and_admin_listeners_serve_https(
    sims: SimFactory, gateway: GatewayFactory, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    sim = await sims(models=["classifier"])
    gw = await gateway(
        f"""
version: 1
gateway:
  tls: {{cert: "{cert}", key: "{key}"}}
  admin_tls: {{cert: "{cert}", key: "{key}"}}
backends:
  clf: {{protocol: kserve-v2, endpoints: [{{url: "{sim.url}"}}]}}
routes:
  - {{name: classify, match: {{model: classifier}}, split: [{{backend: clf, weight: 100}}]}}
"""
    )
    assert gw.listening is not None
    assert gw.listening.url.startswith("https://")
    assert gw.listening.admin_url.startswith("https://")
    trusted = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted)) as http:
        async with http.post(
            gw.listening.url + "/v2/models/classifier/infer", json=INFER_BODY
        ) as r:
            assert r.status == 200
        async with http.get(gw.listening.admin_url + "/readyz") as r:
            assert r.status == 200
    # plain HTTP to the TLS port gets no answer from the gateway
    async with aiohttp.ClientSession() as http:
        try:
            async with http.post(
                gw.listening.url.replace("https://", "http://") + "/v2/models/classifier/infer",
                json=INFER_BODY,
            ) as r:
                assert r.status >= 400
        except aiohttp.ClientError:
            pass
    assert sim.stats.by_kind["infer"] == 1
