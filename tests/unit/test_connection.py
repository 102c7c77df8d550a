"""REDIS_URL: which client each scheme gives, and the URLs refused (no Redis needed: clients
connect on first use)."""

from __future__ import annotations

import pytest
import redis
import redis.utils
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from resizer.store import client_for
from resizer.store.connection import POOL_SIZE


async def test_a_cluster_url_gives_a_cluster_client_seeded_with_every_host() -> None:
    client = client_for("rediss+cluster://me:s%40cret@h1:7000,[::1]:7001/?ssl_cert_reqs=none")
    try:
        assert isinstance(client, RedisCluster)
        seeds = {(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()}
        assert seeds == {("h1", 7000), ("::1", 7001)}
        kwargs = client.nodes_manager.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("me", "s@cret")
        assert kwargs["ssl_cert_reqs"] == "none"
        assert kwargs["socket_timeout"] == 5.0
    finally:
        await client.aclose()


async def test_a_sentinel_url_gives_a_bounded_client_of_the_services_primary() -> None:
    client = client_for("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2?sentinel_password=sp")
    try:
        assert not isinstance(client, RedisCluster)
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "mymaster"
        assert pool.is_master
        assert pool.max_connections == POOL_SIZE
        assert pool.connection_kwargs["db"] == 2
        assert pool.connection_kwargs["password"] == "pw"
        sentinels = pool.sentinel_manager.sentinels
        hosts = [
            (
                s.connection_pool.connection_kwargs["host"],
                s.connection_pool.connection_kwargs["port"],
            )
            for s in sentinels
        ]
        assert hosts == [("s1", 26379), ("s2", 26380)]
        assert sentinels[0].connection_pool.connection_kwargs["password"] == "sp"
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+cluster://", "at least one host"),
        ("redis+cluster://h1/", "host:port"),
        ("redis+cluster://h1:7000/3", "database 0"),
        ("redis+cluster://h1:7000/?colour=blue", "colour"),
        ("redis+sentinel://s1:26379/", "service name"),
        ("redis+sentinel://s1:26379/svc/0/extra", "service name"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        client_for(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/0",
        "rediss://127.0.0.1:1/0",
        "redis+cluster://h1:7000,h2:7001/",
        "redis+sentinel://s1:26379,s2:26380/mymaster",
    ],
)
async def test_connections_are_made_without_reading_the_installed_metadata(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py looks its version up in the installed packages' metadata (a scan of sys.path)
    for each connection unless told it."""

    def scanned() -> str:
        raise AssertionError("redis-py read its version from the installed metadata")

    monkeypatch.setattr(redis.utils, "get_lib_version", scanned)
    client = client_for(url)
    try:
        if not isinstance(client, RedisCluster):
            connection = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
            assert connection.driver_info is not None
            assert connection.driver_info.lib_version == redis.__version__
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("MISCONF Redis is configured to save RDB snapshots, but ...", "WritesRefused"),
        ("NOREPLICAS Not enough good replicas to write.", "WritesRefused"),
        ("READONLY You can't write against a read only replica.", "ReadOnlyError"),
        ("BUSY Redis is busy running a script. You can only call SCRIPT KILL ...", "RedisBusy"),
        ("ERR wrong number of arguments for 'set' command", "ResponseError"),
    ],
)
def test_a_redis_that_takes_no_writes_is_an_outage_not_a_bug(reply: str, kind: str) -> None:
    """Typed by redis-py's parsers (hiredis's too), so every call site sees the same type."""
    from redis._parsers import BaseParser, _AsyncHiredisParser, _AsyncRESP2Parser

    from resizer.store import REDIS_DOWN

    for parser in (BaseParser, _AsyncHiredisParser, _AsyncRESP2Parser):
        error = parser.parse_error(reply)  # type: ignore[no-untyped-call]
        assert type(error).__name__ == kind
        assert isinstance(error, REDIS_DOWN) is (kind != "ResponseError")


@pytest.mark.parametrize(
    ("inside", "kind"),
    [
        ("-MISCONF Errors writing to the AOF file", "WritesRefused"),
        ("-NOREPLICAS Not enough good replicas to write.", "WritesRefused"),
        ("-READONLY You can't write against a read only replica.", "ReadOnlyError"),
        ("-OOM command not allowed when used memory > 'maxmemory'.", "OutOfMemoryError"),
        ("attempt to compare nil with number", "ResponseError"),
    ],
)
async def test_a_refusal_inside_a_script_is_raised_as_the_plain_commands_would_be(
    inside: str, kind: str
) -> None:
    """Redis 6.2 reports a write refused inside a script as a script error."""
    from resizer.store.scripts import Script

    class Refusing:
        def register_script(self, script: str) -> object:
            async def run(keys: list[object], args: list[object]) -> object:
                raise redis.exceptions.ResponseError(
                    f"Error running script (call to f_0): @user_script:9: {inside}"
                )

            run.sha = "0"  # type: ignore[attr-defined]
            run.script = script  # type: ignore[attr-defined]
            return run

    with pytest.raises(redis.exceptions.ResponseError) as raised:
        await Script(Refusing(), "renew")(keys=[], args=[])
    assert type(raised.value).__name__ == kind
