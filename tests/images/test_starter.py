"""The offline starter image busybox:latest, made from busybox-static by `make run`."""

import io
import os
import stat

from django.core.management import call_command

from images.models import Image, Tag
from project.engine import get_engine


def test_it_creates_busybox_latest_once(db, settings, tmp_path):
    settings.RUNTIME_ROOT = str(tmp_path / "runtime")
    out = io.StringIO()
    call_command("ensurestarterimage", stdout=out)
    assert "Created the starter image busybox:latest" in out.getvalue()
    record = get_engine().images.resolve("busybox")
    layer = get_engine().layers.get(record.chain_ids[0])
    assert os.stat(os.path.join(layer.path, "bin", "busybox")).st_mode & stat.S_IXUSR
    assert os.readlink(os.path.join(layer.path, "bin", "sh")) == "/bin/busybox"
    assert os.stat(os.path.join(layer.path, "tmp")).st_mode & 0o7777 == 0o1777
    assert record.config["config"]["Cmd"] == ["sh"]
    assert Tag.objects.get(name="busybox:latest").image == Image.objects.get(digest=record.id)
    # A second run keeps it.
    out = io.StringIO()
    call_command("ensurestarterimage", stdout=out)
    assert "exists" in out.getvalue()
    assert get_engine().images.resolve("busybox").id == record.id
