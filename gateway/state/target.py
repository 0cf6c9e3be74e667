"""Where the shared state lives: one Redis, a Sentinel-managed master, or a Redis Cluster.

The policy names the target with one URL (`state.url`), so a single-node deployment, a
Sentinel deployment and a Cluster deployment differ in one line:

- `redis://[user:pass@]host:6379/0`, `rediss://…`, `unix:///run/redis.sock` — one server;
- `redis+sentinel://[user:pass@]s1:26379,s2:26379,s3:26379/SERVICE[/DB]` — ask the
  sentinels which server is the master of SERVICE, follow it through failovers
  (`rediss+sentinel://` for TLS to the data servers; `?sentinel_password=…` when the
  sentinels have their own password);
- `redis+cluster://[user:pass@]n1:6379,n2:6379,n3:6379` — any reachable nodes of a
  cluster; the client learns the rest (`rediss+cluster://` for TLS).

Parsing is pure and runs when the policy is validated, so a malformed URL is a policy error
with a line number, never a surprise at the first request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote

Mode = Literal["single", "sentinel", "cluster"]

DEFAULT_PORT = {"single": 6379, "sentinel": 26379, "cluster": 6379}

_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}

URL_PATTERN = (
    r"^(redis|rediss|unix|redis\+sentinel|rediss\+sentinel|redis\+cluster|rediss\+cluster)://\S+$"
)

_HOST = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.-]+))(?::(?P<port>\d{1,5}))?$"
)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed `state.url`: the mode, the hosts to start from, and the credentials."""

    mode: Mode
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False

    def safe(self) -> str:
        """The URL with any password masked: what logs and status may show."""
        return _mask(self.url)


def _mask(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    _, at, tail = rest.rpartition("@")
    text = f"{scheme}://***@{tail}" if at else url
    return re.sub(r"(sentinel_password=)[^&]*", r"\1***", text)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse `state.url`; `ValueError` names what is wrong in words an operator can act on."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError(
            "expected a Redis URL like redis://127.0.0.1:6379/0, "
            "redis+sentinel://s1:26379,s2:26379/mymaster or redis+cluster://n1:6379,n2:6379"
        )
    mode, tls = _SCHEMES[scheme]
    if mode == "single":
        if not rest or any(c.isspace() for c in rest):
            raise ValueError("expected a Redis URL like redis://127.0.0.1:6379/0")
        return RedisTarget(mode="single", url=url, tls=tls)
    rest, _, query = rest.partition("?")
    auth, at, location = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = auth.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    hostlist, _, path = location.partition("/")
    hosts = []
    for item in hostlist.split(","):
        m = _HOST.match(item)
        if m is None:
            raise ValueError(f"{item!r} is not HOST or HOST:PORT")
        port = int(m["port"]) if m["port"] else DEFAULT_PORT[mode]
        if not 0 < port < 65536:
            raise ValueError(f"{item!r}: port out of range")
        hosts.append((m["v6"] or m["name"], port))
    parts = [p for p in path.split("/") if p]
    params = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(params) - {"sentinel_password"})
    if unknown:
        raise ValueError(f"unknown URL parameter {unknown[0]!r} (known: sentinel_password)")
    sentinel_password = params.get("sentinel_password", [None])[-1]
    service: str | None = None
    if mode == "sentinel":
        if not parts:
            raise ValueError("name the master: redis+sentinel://HOST:PORT,…/SERVICE[/DB]")
        service, parts = parts[0], parts[1:]
    elif sentinel_password is not None:
        raise ValueError("sentinel_password is only for redis+sentinel URLs")
    if len(parts) > 1 or (parts and not parts[0].isdigit()):
        raise ValueError(f"{'/'.join(parts)!r} is not a database number")
    db = int(parts[0]) if parts else 0
    if mode == "cluster" and db != 0:
        raise ValueError("a Redis Cluster has database 0 only")
    return RedisTarget(
        mode=mode,
        url=url,
        hosts=tuple(hosts),
        service=service,
        db=db,
        username=username,
        password=password,
        sentinel_password=sentinel_password,
        tls=tls,
    )


def cluster_key(key: str) -> str:
    """The key with a hash tag, so everything one operation touches stays in one slot.

    A key that already carries a `{tag}` keeps it: a caller whose operation needs several
    keys names them with the same tag (`a:{t}`, `b:{t}`) and they land in one slot. Any
    other key becomes its own tag, which is all a single-key command or script needs, and
    keeps the store's prefix outside the tag so keys still spread over the cluster.
    """
    start = key.find("{")
    if start >= 0 and key.find("}", start + 2) > start:
        return key
    return "{" + key + "}"


__all__ = ["URL_PATTERN", "RedisTarget", "cluster_key", "parse_redis_url"]
