"""The peer registry: peer name -> factory, filled by the peer modules themselves.

Each peer module of ``experiments.peers`` registers its peers when imported
(``register_peer``), and the package imports every module it holds, so a new peer is
one new module and nothing else::

    from experiments.peers.base import Peer
    from experiments.peers.registry import register_peer

    @register_peer("my_peer")
    class MyPeer(Peer):
        name = "my_peer"

        def predict(self, image, box): ...

Peer modules import their heavy dependencies (dlib, mtcnn, TensorFlow) inside the
functions that need them, so importing the package stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from experiments.peers.base import Peer

PEERS: dict[str, Callable[..., Peer]] = {}
"""Peer name -> factory taking keyword options (``PEERS[name](**kwargs)``)."""

_Factory = TypeVar("_Factory", bound=Callable[..., Peer])


def register_peer(name: str, factory: Callable[..., Peer] | None = None):
    """Registers ``factory`` (a ``Peer`` class or a callable returning one) as ``name``.

    Used as ``register_peer(name, factory)`` or as the class decorator
    ``@register_peer(name)``.

    Raises:
        ValueError: ``name`` is already registered to another factory.
    """

    def add(target: _Factory) -> _Factory:
        if PEERS.get(name, target) is not target:
            raise ValueError(f"peer {name!r} is already registered ({PEERS[name]!r})")
        PEERS[name] = target
        return target

    return add if factory is None else add(factory)


def make_peer(name: str, **kwargs) -> Peer:
    """Builds the peer registered as ``name`` (a key of ``PEERS``)."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    return PEERS[name](**kwargs)


def peer_class(name: str) -> type[Peer] | None:
    """The class behind the factory registered as ``name`` (that of a
    ``functools.partial``), or ``None`` for another callable."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    factory = PEERS[name]
    target = getattr(factory, "func", factory)
    return target if isinstance(target, type) else None


def peer_unavailable(name: str) -> str:
    """Why the peer registered as ``name`` cannot be built here (``""``: it can).

    Reads its class's ``Peer.unavailable`` (a missing optional package, model file or
    venv); builds nothing.
    """
    cls = peer_class(name)
    check = getattr(cls, "unavailable", None)
    return check() if check is not None else ""
