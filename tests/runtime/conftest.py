"""Fixtures shared by the runtime tests that run real containers (test_containers, test_attach,
test_build, test_network): an engine on a temp root of its own with the offline busybox starter
image imported, and a factory of busybox containers.

Scopes are the ones each module had: one engine root per module, containers per test. A module
names its temp dir with ``ENGINE_DIR_PREFIX`` (``bt-`` by default), and may override ``store``
(test_network does, to attach its network manager first). Modules that define their own
``engine``, ``store`` or ``ctr`` (test_fsops, test_pull, test_push, test_store) use theirs.
"""

import os
import shutil
import tempfile

import pytest

from runtime.config import RuntimeConfig
from runtime.containers import ContainerConfig
from runtime.engine import Engine
from runtime.errors import NotFound
from tests.support.starter import import_busybox


@pytest.fixture(scope="module")
def base(request):
    """The module's temp dir: the engine's ``root`` and ``run`` dirs go under it; removed at the end."""
    # Under /tmp with a short name: conmon's attach socket path must fit in 107 bytes.
    path = tempfile.mkdtemp(prefix=getattr(request.module, "ENGINE_DIR_PREFIX", "bt-"), dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(base):
    """An Engine rooted in ``base`` with busybox:latest imported from the offline starter image.

    Every container still there at the end of the module is force-removed (before ``base`` goes).
    """
    config = RuntimeConfig(root=os.path.join(base, "root"), run_root=os.path.join(base, "run"))
    engine = Engine(config)
    import_busybox(engine)
    yield engine
    for record in engine.containers.list(all=True):
        engine.containers.remove(record.id, force=True)


@pytest.fixture
def store(engine):
    return engine.containers


@pytest.fixture
def ctr(store):
    """Create (and optionally start) a busybox container; every one is force-removed afterwards."""
    made = []

    def make(*cmd, start=True, **options):
        options.setdefault("image", "busybox")
        record = store.create(ContainerConfig(cmd=list(cmd) if cmd else None, **options))
        made.append(record.id)
        return store.start(record.id) if start else record

    yield make
    for cid in made:
        try:
            store.remove(cid, force=True)
        except NotFound:
            pass
