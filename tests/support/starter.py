"""The offline busybox starter image (runtime/starter.py) imported into a test's engine."""

import io

from runtime.starter import STARTER_CHANGES, write_rootfs


def import_busybox(engine, reference: str = "busybox:latest"):
    rootfs = io.BytesIO()
    write_rootfs(rootfs)
    rootfs.seek(0)
    return engine.images.import_tar(rootfs, changes=STARTER_CHANGES, reference=reference)
