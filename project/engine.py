"""The one place where Django settings reach runtime/: build the engine's config and objects."""

from functools import lru_cache

from django.conf import settings

from runtime import info
from runtime.config import RuntimeConfig


def runtime_config() -> RuntimeConfig:
    """The RuntimeConfig of this node, from settings (read each time: tests override settings)."""
    return RuntimeConfig(
        root=settings.RUNTIME_ROOT,
        run_root=settings.RUNTIME_RUN_ROOT,
        insecure_registries=tuple(settings.INSECURE_REGISTRIES),
        seccomp_native_only=settings.SECCOMP_NATIVE_ONLY,
        default_runtime=settings.DEFAULT_RUNTIME,
        cgroup_favor_dynmods=settings.CGROUP_FAVOR_DYNMODS,
        dns_upstreams=tuple(settings.DNS_UPSTREAMS),
    )


@lru_cache(maxsize=1)
def system_info() -> dict:
    """Host and engine facts that do not change while the process runs (versions, host, root)."""
    return info.system_info(runtime_config())


_engine = None


def get_engine():
    """This process's Engine (runtime.engine.Engine), built once from settings."""
    global _engine
    config = runtime_config()
    if _engine is None or _engine.config != config:
        from runtime.engine import Engine

        _engine = Engine(config)
    return _engine
