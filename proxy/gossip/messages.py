"""Typed membership messages and their compact JSON payloads.

Payload keys are one or two letters because every probe carries them; the
numbers of the message types live in ``wire.MessageType`` (append-only). New
optional fields may be added to a payload at any time: readers ignore keys they
do not know and give a default for keys that are missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from .wire import MessageType


class MemberState(IntEnum):
    """Values travel in push-pull member lists: append-only."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str
    reply_to: str  # "host:port" the ack must go to

    TYPE = MessageType.PING

    def payload(self) -> dict[str, Any]:
        return {"q": self.seq, "n": self.target, "s": self.reply_to}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Ping:
        return cls(int(p["q"]), str(p["n"]), str(p["s"]))


@dataclass(frozen=True, slots=True)
class IndirectPing:
    seq: int
    target: str
    target_addr: str
    reply_to: str
    want_nack: bool

    TYPE = MessageType.INDIRECT_PING

    def payload(self) -> dict[str, Any]:
        return {"q": self.seq, "n": self.target, "a": self.target_addr, "s": self.reply_to, "k": self.want_nack}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> IndirectPing:
        return cls(int(p["q"]), str(p["n"]), str(p["a"]), str(p["s"]), bool(p.get("k", False)))


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int

    TYPE = MessageType.ACK

    def payload(self) -> dict[str, Any]:
        return {"q": self.seq}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Ack:
        return cls(int(p["q"]))


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int

    TYPE = MessageType.NACK

    def payload(self) -> dict[str, Any]:
        return {"q": self.seq}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Nack:
        return cls(int(p["q"]))


@dataclass(frozen=True, slots=True)
class Alive:
    name: str
    incarnation: int
    addr: str
    region: str
    pushpull_port: int

    TYPE = MessageType.ALIVE

    def payload(self) -> dict[str, Any]:
        return {"n": self.name, "i": self.incarnation, "a": self.addr, "r": self.region, "p": self.pushpull_port}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Alive:
        addr = str(p["a"])
        default_port = int(addr.rsplit(":", 1)[1])
        return cls(str(p["n"]), int(p["i"]), addr, str(p.get("r", "")), int(p.get("p", default_port)))


@dataclass(frozen=True, slots=True)
class Suspect:
    name: str
    incarnation: int
    accuser: str

    TYPE = MessageType.SUSPECT

    def payload(self) -> dict[str, Any]:
        return {"n": self.name, "i": self.incarnation, "f": self.accuser}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Suspect:
        return cls(str(p["n"]), int(p["i"]), str(p["f"]))


@dataclass(frozen=True, slots=True)
class Dead:
    name: str
    incarnation: int
    accuser: str  # == name: the node left gracefully

    TYPE = MessageType.DEAD

    @property
    def is_leave(self) -> bool:
        return self.accuser == self.name

    def payload(self) -> dict[str, Any]:
        return {"n": self.name, "i": self.incarnation, "f": self.accuser}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Dead:
        return cls(str(p["n"]), int(p["i"]), str(p["f"]))


@dataclass(frozen=True, slots=True)
class MemberEntry:
    """One member as carried in a push-pull exchange.

    ``row_version`` is the version of that member's state row the sender
    holds (0: none): the digest that lets the other side send only newer rows.
    """

    name: str
    incarnation: int
    addr: str
    region: str
    pushpull_port: int
    state: MemberState
    row_version: int = 0

    def payload(self) -> list[Any]:
        return [self.name, self.incarnation, self.addr, self.region, self.pushpull_port, int(self.state),
                self.row_version]

    @classmethod
    def parse(cls, p: list[Any]) -> MemberEntry:
        row_version = int(p[6]) if len(p) > 6 else 0
        return cls(str(p[0]), int(p[1]), str(p[2]), str(p[3]), int(p[4]), MemberState(int(p[5])), row_version)

    def as_alive(self) -> Alive:
        return Alive(self.name, self.incarnation, self.addr, self.region, self.pushpull_port)


MembershipMessage = Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead

PARSERS: dict[int, Any] = {
    MessageType.PING: Ping.parse,
    MessageType.INDIRECT_PING: IndirectPing.parse,
    MessageType.ACK: Ack.parse,
    MessageType.NACK: Nack.parse,
    MessageType.ALIVE: Alive.parse,
    MessageType.SUSPECT: Suspect.parse,
    MessageType.DEAD: Dead.parse,
}


def split_addr(addr: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port)."""
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


def join_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
