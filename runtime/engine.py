"""The Engine facade (Podman's Runtime): one object that owns a node's store, layers and images.

Callers (the Celery worker through ``project.engine``) build one Engine per process and call its
verbs; every verb is safe to call from several processes at once (the stores lock what they share).
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from . import cgroups
from .config import RuntimeConfig
from .containers import ContainerConfig, ContainerRecord, ContainerStore
from .digest import Digest
from .errors import EngineError, InvalidArgument
from .images import ImageRecord, ImageStore
from .layers import LayerStore
from .pull import Progress, Puller
from .push import Pusher
from .reference import parse_reference
from .registry import RegistryClient, SearchResult
from .store import Store
from .transport import is_loopback_host, split_host_port

logger = logging.getLogger(__name__)

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
        self.containers = ContainerStore(config, self.images, self.layers)
        # runtime.network.NetworkManager: networks (``docker network``) and the containers' CNI hook.
        self.networks = self.containers.network

    def start(self, network_pool: int = 0, dns: bool = False) -> None:
        """Drop what an interrupted process left in the staging areas (never a finished blob or layer),
        and what stopped or removed containers left in the network (leases, chains, namespaces).
        ``network_pool``: keep that many namespaces ready on the default network (the worker's).
        ``dns``: answer the embedded DNS of user-defined networks from this process (the worker's)."""
        self.store.clean_tmp()
        # Settle the default OCI runtime now (with "auto", this may bind cgroup controllers for
        # crun: ContainerStore.crun_usable), not at the first create.
        if self.config.default_runtime not in ("auto", "runc", "crun"):
            raise EngineError(f"unknown default OCI runtime {self.config.default_runtime!r} "
                              "(BERTH_DEFAULT_RUNTIME: auto, runc or crun)")
        self.containers.default_runtime()
        # After default_runtime: on a v1 host it may have mounted the cgroup2 hierarchy this needs.
        if self.config.cgroup_favor_dynmods and not cgroups.favor_dynmods():
            logger.info("cgroup2's favordynmods is not available here (no cgroup2 mount, or Linux "
                        "before 6.1): each container's create waits for an RCU grace period")
        cleanup = getattr(self.networks, "cleanup", None)
        if cleanup is not None:
            cleanup()
        if network_pool and hasattr(self.networks, "start_pool"):
            self.networks.start_pool(network_pool)
        if dns and hasattr(self.networks, "start_dns"):
            self.networks.start_dns()

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

    #
    # Containers: runtime.containers.ContainerStore does the work; these are its verbs by name.
    #

    def create_container(self, config: ContainerConfig) -> ContainerRecord:
        """``docker create``: see ContainerStore.create."""
        return self.containers.create(config)

    def start_container(self, container: str) -> ContainerRecord:
        """``docker start``: see ContainerStore.start."""
        return self.containers.start(container)

    def stop_container(self, container: str, timeout: int | None = None) -> ContainerRecord:
        """``docker stop``: see ContainerStore.stop."""
        return self.containers.stop(container, timeout)

    def kill_container(self, container: str, signal: str | int = "KILL") -> ContainerRecord:
        """``docker kill``: see ContainerStore.kill."""
        return self.containers.kill(container, signal)

    def restart_container(self, container: str, timeout: int | None = None) -> ContainerRecord:
        """``docker restart``: see ContainerStore.restart."""
        return self.containers.restart(container, timeout)

    def pause_container(self, container: str) -> ContainerRecord:
        """``docker pause``: see ContainerStore.pause."""
        return self.containers.pause(container)

    def unpause_container(self, container: str) -> ContainerRecord:
        """``docker unpause``: see ContainerStore.unpause."""
        return self.containers.unpause(container)

    def wait_container(self, container: str, timeout: float | None = None,
                       condition: str = "not-running") -> int:
        """``docker wait``: see ContainerStore.wait."""
        return self.containers.wait(container, timeout, condition)

    def remove_container(self, container: str, force: bool = False, volumes: bool = False) -> None:
        """``docker rm``: see ContainerStore.remove."""
        self.containers.remove(container, force=force, volumes=volumes)

    def rename_container(self, container: str, new_name: str) -> ContainerRecord:
        """``docker rename``: see ContainerStore.rename."""
        return self.containers.rename(container, new_name)

    def container(self, container: str) -> ContainerRecord:
        """One container by id, name or id prefix: see ContainerStore.get."""
        return self.containers.get(container)

    def list_containers(self, all: bool = False) -> list[ContainerRecord]:
        """``docker ps [-a]``: see ContainerStore.list."""
        return self.containers.list(all=all)

    def inspect_container(self, container: str) -> dict:
        """``docker inspect``: see ContainerStore.inspect."""
        return self.containers.inspect(container)

    def container_logs(self, container: str, **options):
        """``docker logs``: see ContainerStore.logs."""
        return self.containers.logs(container, **options)

    def exec_in_container(self, container: str, cmd: list[str], **options):
        """``docker exec``: see ContainerStore.exec."""
        return self.containers.exec(container, cmd, **options)

    def reconcile_containers(self) -> list[ContainerRecord]:
        """Sync every container with what conmon and runc left: see ContainerStore.reconcile."""
        return self.containers.reconcile()


def split_search_term(term: str) -> tuple[str | None, str]:
    """Split "127.0.0.1:5000/team" into ("127.0.0.1:5000", "team"); a bare term has no registry.

    The first component names a registry as in Docker's references: it has a dot or a colon, or is
    "localhost".
    """
    registry, _, rest = term.partition("/")
    if rest and ("." in registry or ":" in registry or registry == "localhost"):
        return registry, rest
    return None, term
