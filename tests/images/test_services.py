"""The models follow the disk: sync_image and the reconcile pass."""

import io
import tarfile

import pytest

from images import services
from images.models import Image, Layer, Tag
from project.engine import get_engine


@pytest.fixture
def engine(settings, tmp_path):
    settings.RUNTIME_ROOT = str(tmp_path / "runtime")
    return get_engine()


def rootfs(name: str, data: bytes) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def test_sync_image_records_layers_and_tags(db, engine):
    record = engine.images.import_tar(rootfs("a.txt", b"a"), reference="app:v1")
    image = services.sync_image(record)
    assert image.digest == record.id
    assert [t.name for t in image.tags.all()] == ["app:v1"]
    assert image.image_layers.count() == 1
    assert Layer.objects.get().chain_id == record.chain_ids[0]


def test_a_tag_moving_to_another_image_moves_in_the_models(db, engine):
    first = services.sync_image(engine.images.import_tar(rootfs("a.txt", b"1"), reference="app:v1"))
    second = services.sync_image(engine.images.import_tar(rootfs("a.txt", b"2"), reference="app:v1"))
    services.reconcile_images()
    assert Tag.objects.get(name="app:v1").image == second
    first.refresh_from_db()
    assert first.is_dangling


def test_reconcile_rebuilds_a_lost_database_from_the_disk(db, engine):
    record = engine.images.import_tar(rootfs("a.txt", b"a"), reference="app:v1")
    services.sync_image(record)
    Image.objects.all().delete()
    Layer.objects.all().delete()
    answer = services.reconcile_images()
    assert answer["images"] == 1
    assert Image.objects.get().tags.get().name == "app:v1"


def test_reconcile_drops_images_that_left_the_disk(db, engine):
    record = engine.images.import_tar(rootfs("a.txt", b"a"), reference="app:v1")
    services.sync_image(record)
    engine.images.remove("app:v1")
    answer = services.reconcile_images()
    assert answer["removed"] == [record.id]
    assert not Image.objects.exists() and not Layer.objects.exists()


def test_syncing_an_unchanged_image_again_writes_nothing(db, engine):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from project.models import Job

    record = engine.images.import_tar(rootfs("a.txt", b"a"), reference="app:v1")
    services.sync_image(record)
    job = Job.objects.create(kind="build", target="app:v1")
    with CaptureQueriesContext(connection) as first:
        image = services.sync_image(record, job=job)
    assert image.job == job  # the job that made it, set once
    later = Job.objects.create(kind="build", target="app:v1")
    with CaptureQueriesContext(connection) as again:
        services.sync_image(engine.images.get(str(record.id)), job=later)
    writes = [q["sql"] for q in again.captured_queries if q["sql"].split()[0] in ("INSERT", "UPDATE", "DELETE")]
    assert writes == []
    assert [q for q in first.captured_queries if q["sql"].startswith("UPDATE")]
    assert Image.objects.get().job == job
    assert [t.name for t in Tag.objects.all()] == ["app:v1"]


def test_a_tag_dropped_on_the_disk_is_dropped_from_the_rows(db, engine):
    record = engine.images.import_tar(rootfs("a.txt", b"a"), reference="app:v1")
    engine.images.tag(str(record.id), "app:v2")
    services.sync_image(engine.images.get(str(record.id)))
    engine.images.untag("app:v1")
    image = services.sync_image(engine.images.get(str(record.id)))
    assert [t.name for t in image.tags.all()] == ["app:v2"]
