"""A profile's ``fleet:`` section: the NATS server a supervisor joins, the name it goes by
there, its credentials and TLS. A profile with ``fleet:`` serves its own models to the
fleet and sends the fleet what it does not serve; with ``models: {}`` it is a pure front.
``smackctl start --join nats://HOST:4222`` sets the URL for one run."""

from __future__ import annotations

import re
import socket

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["FleetCredentials", "FleetSpec", "FleetTls"]

_URL = re.compile(r"^(nats|tls)://[^\s/]+(:\d+)?/?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetCredentials(_Strict):
    """One way to log in to the NATS server: a token, a user and password, or an nkey seed
    file (write secrets as ``${ENV_VAR}``: the profile expands them)."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    nkey_file: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> FleetCredentials:
        ways = [self.token is not None, self.user is not None, self.nkey_file is not None]
        if sum(ways) > 1:
            raise ValueError("give one of: token, user + password, nkey_file")
        if (self.user is None) != (self.password is None):
            raise ValueError("a user needs its password (and a password its user)")
        return self


class FleetTls(_Strict):
    """The CA that signed the NATS server's certificate, and this member's own (mutual TLS)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


class FleetSpec(_Strict):
    #: the NATS server: nats://HOST:4222 (tls://HOST:4222 for TLS)
    url: str
    #: this member's name in the fleet (default: the machine's host name)
    name: str = Field(default_factory=lambda: _host_name())
    credentials: FleetCredentials = FleetCredentials()
    tls: FleetTls | None = None
    #: seconds between heartbeats; a member that misses 3 is dropped
    heartbeat: float = Field(2.0, gt=0, le=2.0)
    #: answers this member's response cache keeps are the fleet's too (JetStream's bucket)
    share_cache: bool = True

    @field_validator("url")
    @classmethod
    def _nats_url(cls, url: str) -> str:
        if not _URL.match(url):
            raise ValueError(f"{url!r} is not a NATS server's URL: write nats://HOST:4222")
        return url

    @field_validator("name")
    @classmethod
    def _member_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                f"{name!r} cannot name a member: letters, digits, '_' and '-' (up to 63)"
            )
        return name


def _host_name() -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:63]
    return name if _NAME.match(name) else "member"
