"""The Engine facade (Podman's Runtime): one object that owns a node's store, layers and images.

Callers (the Celery worker through ``project.engine``) build one Engine per process and call its
verbs; every verb is safe to call from several processes at once (the stores lock what they share).
"""

from __future__ import annotations

import os
from typing import Callable

from .config import RuntimeConfig
from .digest import Digest
from .errors import InvalidArgument
from .images import ImageRecord, ImageStore
from .layers import LayerStore
from .pull import Progress, Puller
from .push import Pusher
from .reference import Reference, parse_reference
from .registry import RegistryClient, SearchResult
from .store import Store
from .transport import is_loopback_host, split_host_port

DOCKER_HUB = "docker.io"


class Engine:
    """A node's engine. ``start()`` once per process before use (it cleans staging areas)."""

    def __init__(self, config: RuntimeConfig):
        self.config = config
        os.makedirs(config.root, mode=0o711, exist_ok=True)
        self.store = Store(config.root)
        self.layers = LayerStore(config.root)
        self.images = ImageStore(config.root, self.store, self.layers)
        self.puller = Puller(config.root, self.store, self.layers, self.images)
        self.pusher = Pusher(self.store, self.layers, self.images)

    def start(self) -> None:
        """Drop what an interrupted process left in the staging areas (never a finished blob or layer)."""
        self.store.clean_tmp()

    #
    # Registries
    #

    def is_insecure(self, registry: str) -> bool:
        """Plain HTTP is used for loopback registries and the ones configured as insecure."""
        host, _ = split_host_port(registry)
        return is_loopback_host(host) or registry in self.config.insecure_registries

    def registry_client(self, registry: str, credentials: tuple[str, str] | None = None) -> RegistryClient:
        return RegistryClient(registry, credentials=credentials, insecure=self.is_insecure(registry),
                              timeout=self.config.net_timeout)

    #
    # Images
    #

    def pull(self, reference: str, *, credentials: tuple[str, str] | None = None,
             progress: Progress | None = None, cancelled: Callable[[], bool] | None = None) -> ImageRecord:
        """``docker pull``: see runtime.pull.Puller.pull."""
        ref = parse_reference(reference)
        client = self.registry_client(ref.registry, credentials)
        return self.puller.pull(client, ref, progress=progress, cancelled=cancelled)

    def push(self, reference: str, *, credentials: tuple[str, str] | None = None,
             progress: Progress | None = None, cancelled: Callable[[], bool] | None = None) -> Digest:
        """``docker push``: see runtime.push.Pusher.push. Returns the manifest digest."""
        ref = parse_reference(reference)
        client = self.registry_client(ref.registry, credentials)
        return self.pusher.push(client, ref, progress=progress, cancelled=cancelled)

    def search(self, term: str, *, limit: int = 25, credentials: tuple[str, str] | None = None) -> list[SearchResult]:
        """``docker search``: "registry/term" searches that registry, a bare term searches Docker Hub."""
        registry, term = split_search_term(term)
        if not term:
            raise InvalidArgument("search term is empty")
        return self.registry_client(registry or DOCKER_HUB, credentials).search(term, limit)


def split_search_term(term: str) -> tuple[str | None, str]:
    """Split "127.0.0.1:5000/team" into ("127.0.0.1:5000", "team"); a bare term has no registry.

    The first component names a registry as in Docker's references: it has a dot or a colon, or is
    "localhost".
    """
    registry, _, rest = term.partition("/")
    if rest and ("." in registry or ":" in registry or registry == "localhost"):
        return registry, rest
    return None, term
