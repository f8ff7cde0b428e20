"""Tests for runtime.build: real builds (runc, conmon, overlayfs) from the offline busybox image.

One engine root per module under /tmp (conmon's socket paths must stay short). The parser has its
own unit tests in tests/runtime/test_dockerfile.py.
"""

import hashlib
import io
import os
import tarfile

import pytest

from runtime.build import BuildError, DockerfileError, build, prune_cache
from runtime.containers import ContainerConfig
from runtime.engine import Engine
from runtime.errors import UnsafeArchive

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")


# The base and engine fixtures are in conftest.py.
ENGINE_DIR_PREFIX = "bb-"


def context(files: dict) -> io.BytesIO:
    """A context tar: {name: bytes | str | ("symlink", target) | ("dir",)}."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, value in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if isinstance(value, tuple) and value[0] == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, value[1]
                tf.addfile(info)
            elif isinstance(value, tuple) and value[0] == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                data = value.encode() if isinstance(value, str) else value
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def run_build(engine, files, **options):
    events = []
    image = build(engine, context(files), progress=events.append, **options)
    return image, events


def text(events) -> str:
    return "".join(e.get("stream", "") for e in events)


def run_image(engine, image, *cmd) -> tuple[int, str]:
    record = engine.containers.create(ContainerConfig(image=str(image), cmd=list(cmd) or None))
    try:
        engine.containers.start(record.id)
        code = engine.containers.wait(record.id, timeout=20)
        out = b"".join(line for _, line, _ in engine.containers.logs(record.id))
        return code, out.decode()
    finally:
        engine.containers.remove(record.id, force=True)


MULTI_STAGE = """\
# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS builder
ARG GREETING=hello
RUN mkdir -p /out && echo "$GREETING from builder" > /out/greeting && echo built-ok
COPY app.txt /src/app.txt

FROM busybox
LABEL org.example.name="demo app"
ENV APP_HOME=/app \\
    MODE=prod
WORKDIR $APP_HOME
COPY --from=builder /out/greeting ./greeting
COPY --chown=nobody:nogroup app.txt conf/ ./
USER nobody
EXPOSE 8080
CMD ["sh", "-c", "echo mode=$MODE; pwd; id -u; cat greeting app.txt; ls -n /app"]
"""

FILES = {
    "Dockerfile": MULTI_STAGE,
    ".dockerignore": "# ignored\nsecret.txt\n**/*.log\n!conf/keep.log\n",
    "app.txt": "app v1\n",
    "secret.txt": "do not ship\n",
    "conf/settings.ini": "[x]\n",
    "conf/debug.log": "noise\n",
    "conf/keep.log": "kept\n",
}


@pytest.fixture(scope="module")
def first(engine):
    image, events = run_build(engine, dict(FILES), tags=["demo:1", "demo:latest"],
                              build_args={"GREETING": "bonjour", "UNUSED": "x"})
    return image, events


def test_multi_stage_build_runs_with_env_workdir_user_and_copies(engine, first):
    image, events = first
    assert image.repo_tags == ["demo:1", "demo:latest"]
    log = text(events)
    assert "Step 1/13 : FROM ${BASE} AS builder\n" in log
    assert "built-ok\n" in log  # RUN output streamed.
    assert " ---> Running in " in log and "Removing intermediate container" in log
    assert f"Successfully built {image.short_id}\n" in log
    assert "Successfully tagged demo:1\n" in log
    assert {"aux": {"ID": str(image.id)}} in events
    assert "[Warning] One or more build-args [UNUSED] were not consumed\n" in log

    code, out = run_image(engine, "demo:1")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "mode=prod"
    assert lines[1] == "/app"
    assert lines[2] == "65534"
    assert "bonjour from builder" in out  # ARG override reached the RUN.
    assert "app v1" in out
    listing = out.split("app v1\n", 1)[1]
    assert "settings.ini" in listing and "keep.log" in listing
    assert "debug.log" not in listing and "secret.txt" not in listing
    owners = {line.split()[-1]: line.split()[2:4] for line in listing.splitlines()[1:]}
    assert owners["app.txt"] == ["65534", "65534"]  # --chown=nobody:nogroup
    assert owners["greeting"] == ["0", "0"]

    config = image.config["config"]
    assert config["User"] == "nobody"
    assert config["WorkingDir"] == "/app"
    assert "MODE=prod" in config["Env"]
    assert config["Labels"]["org.example.name"] == "demo app"
    assert config["ExposedPorts"] == {"8080/tcp": {}}


def test_dockerignore_excluded_file_cannot_be_copied(engine):
    files = {"Dockerfile": "FROM busybox\nCOPY secret.txt /\n", ".dockerignore": "secret.txt\n",
             "secret.txt": "x"}
    with pytest.raises(BuildError, match="excluded by .dockerignore"):
        run_build(engine, files)


def test_arg_default_is_used_without_override(engine):
    files = {"Dockerfile": "FROM busybox\nARG WHO=world\nRUN echo \"hi $WHO\" > /who\nCMD [\"cat\", \"/who\"]\n"}
    image, _ = run_build(engine, files)
    assert run_image(engine, image.id) == (0, "hi world\n")
    image, _ = run_build(engine, files, build_args={"WHO": "berth"})
    assert run_image(engine, image.id) == (0, "hi berth\n")


def test_second_build_is_all_cached_and_one_changed_file_rebuilds_from_its_step(engine, first):
    image, _ = first
    again, events = run_build(engine, dict(FILES), build_args={"GREETING": "bonjour"})
    log = text(events)
    assert again.id == image.id
    steps = log.count("Step ")
    assert log.count(" ---> Using cache\n") == steps - 2  # Both FROMs are not steps of the cache.
    assert "Running in" not in log

    changed = dict(FILES, **{"conf/settings.ini": "[y]\n"})
    rebuilt, events = run_build(engine, changed, build_args={"GREETING": "bonjour"})
    log = text(events)
    assert rebuilt.id != image.id
    blocks = log.split("Step ")[1:]
    cached = [b.split("\n", 1)[0] for b in blocks if "Using cache" in b]
    fresh = [b.split("\n", 1)[0] for b in blocks if "Using cache" not in b and " : FROM" not in b]
    assert [f.split(" : ")[0] for f in fresh] == ["10/13", "11/13", "12/13", "13/13"]
    assert fresh[0] == "10/13 : COPY --chown=nobody:nogroup app.txt conf/ ./"
    assert len(cached) == 7
    assert any("COPY --from=builder" in c for c in cached)
    assert any("RUN mkdir" in c for c in cached)

    nocache, events = run_build(engine, dict(FILES), build_args={"GREETING": "bonjour"}, no_cache=True)
    assert "Using cache" not in text(events)


def test_on_image_names_the_images_a_build_adds_or_tags(engine, first):
    files = {"Dockerfile": "FROM busybox\nENV STEP=one\nRUN echo two > /two\n"}
    seen = []
    image, _ = run_build(engine, files, tags=["seen:1"], on_image=seen.append)
    assert len(seen) == 3 and len(set(seen)) == 2  # ENV's image, RUN's image, then RUN's tagged
    assert seen[1:] == [str(image.id), str(image.id)]
    again = []
    cached, _ = run_build(engine, files, tags=["seen:1"], on_image=again.append)
    assert cached.id == image.id and again == [str(image.id)]  # a cached build adds nothing, tags once


def build_from_file(engine, tmp_path, files, **options):
    """A build whose context is a file, as the worker reads it (kept contexts need one)."""
    path = tmp_path / "context.tar"
    path.write_bytes(context(files).getvalue())
    events = []
    with open(path, "rb") as f:
        image = build(engine, f, progress=events.append, **options)
    return image, events, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_rebuild_of_the_same_context_uses_the_kept_one_and_a_change_still_rebuilds(engine, tmp_path):
    kept_dir = os.path.join(engine.config.root, "build-cache", "contexts")
    files = {"Dockerfile": "FROM busybox\nCOPY app/ /app/\nCMD [\"cat\", \"/app/a.txt\"]\n",
             "app/a.txt": "kept v1\n", "app/b.txt": "b\n"}
    image, _, digest = build_from_file(engine, tmp_path, files)
    assert digest in os.listdir(kept_dir)
    assert sorted(os.listdir(os.path.join(kept_dir, digest, "context", "app"))) == ["a.txt", "b.txt"]
    again, events, _ = build_from_file(engine, tmp_path, files)
    assert again.id == image.id and text(events).count("Using cache") == 2
    fresh, events, _ = build_from_file(engine, tmp_path, files, no_cache=True)  # COPY from the kept context
    assert "Using cache" not in text(events) and run_image(engine, fresh.id) == (0, "kept v1\n")
    changed, events, other = build_from_file(engine, tmp_path, dict(files, **{"app/a.txt": "kept v2\n"}))
    assert changed.id != image.id and "Using cache" not in text(events)
    assert run_image(engine, changed.id) == (0, "kept v2\n")
    assert {digest, other} <= set(os.listdir(kept_dir))
    assert set(os.listdir(os.path.join(kept_dir, digest, "context", "app"))) == {"a.txt", "b.txt"}  # as it was


def test_a_context_that_dockerignore_shrinks_is_not_kept(engine, tmp_path):
    files = {"Dockerfile": "FROM busybox\nCOPY . /ctx/\n", ".dockerignore": "*.log\n", "x.log": "noise", "y": "y"}
    _, _, digest = build_from_file(engine, tmp_path, files)
    assert digest not in os.listdir(os.path.join(engine.config.root, "build-cache", "contexts"))


def test_cache_survives_a_new_engine_object(engine, first):
    fresh = Engine(engine.config)
    _, events = run_build(fresh, dict(FILES), build_args={"GREETING": "bonjour"})
    assert "Running in" not in text(events)


def test_history_shows_created_by_and_empty_layers(engine, first):
    image, _ = first
    history = image.config["history"]
    created = [h["created_by"] for h in history if "created_by" in h]
    assert "/bin/sh -c #(nop)  ENV APP_HOME=/app MODE=prod" in created
    assert "/bin/sh -c #(nop)  USER nobody" in created
    assert '/bin/sh -c #(nop)  CMD ["sh" "-c" "echo mode=$MODE; pwd; id -u; cat greeting app.txt; ls -n /app"]' in created
    env = next(h for h in history if h.get("created_by", "").startswith("/bin/sh -c #(nop)  ENV"))
    assert env["empty_layer"] is True
    copy = next(h for h in history if " COPY file:" in h.get("created_by", "") or " COPY multi:" in h.get("created_by", ""))
    assert "empty_layer" not in copy
    shown = engine.images.history("demo:1")
    assert shown[0]["CreatedBy"].startswith('/bin/sh -c #(nop)  CMD')
    assert shown[0]["Size"] == 0
    non_empty = [h for h in history if not h.get("empty_layer")]
    assert len(non_empty) == len(image.chain_ids)


def test_history_names_the_images_of_the_steps_as_the_classic_builder_does(engine):
    """Each entry a build step ended shows that step's image id (the base image's with its tags),
    the final one its own; what came before the base image says <missing>. Inspect names the
    parent step's image."""
    image, _ = run_build(engine, {"Dockerfile": "FROM busybox\nRUN echo a > /a\nENV X=1\nRUN echo b > /b\n"},
                         tags=["steps:1"])
    shown = engine.images.history("steps:1")
    base = engine.images.resolve("busybox:latest")
    ids = [h["Id"] for h in shown]
    assert ids[0] == image.id and shown[0]["Tags"] == ["steps:1"]
    base_index = len(shown) - len(base.config["history"])
    assert ids[base_index] == base.id and shown[base_index]["Tags"] == ["busybox:latest"]
    steps = ids[1:base_index]
    assert len(steps) == 2 and all(i.startswith("sha256:") for i in steps) and len(set(steps)) == 2
    assert all(i == "<missing>" for i in ids[base_index + 1:])
    assert [h["CreatedBy"] for h in shown[:4]] == ["/bin/sh -c echo b > /b", "/bin/sh -c #(nop)  ENV X=1",
                                                   "/bin/sh -c echo a > /a", shown[base_index]["CreatedBy"]]
    assert engine.images.inspect("steps:1")["Parent"] == steps[0]
    assert engine.images.inspect(steps[-1])["Parent"] == base.id


def test_run_history_and_build_arg_prefix(engine):
    files = {"Dockerfile": "FROM busybox\nARG V=1\nRUN echo $V > /v\n"}
    image, _ = run_build(engine, files)
    assert image.config["history"][-1]["created_by"] == "|1 V=1 /bin/sh -c echo $V > /v"


def test_failing_run_stops_the_build_with_its_code_and_output(engine):
    files = {"Dockerfile": "FROM busybox\nRUN echo before-failure && false\nRUN echo never\n"}
    events = []
    with pytest.raises(BuildError) as info:
        build(engine, context(files), progress=events.append)
    assert str(info.value) == "The command '/bin/sh -c echo before-failure && false' returned a non-zero code: 1"
    assert info.value.code == 1
    assert "before-failure\n" in text(events)
    assert "never" not in text(events).replace("RUN echo never", "")
    assert events[-1] == {"error": str(info.value), "errorDetail": {"message": str(info.value), "code": 1}}
    assert "Step 3/3" not in text(events)
    assert not engine.containers.list(all=True)


def test_copy_outside_the_context_is_refused(engine):
    for dockerfile, files in (
        ("FROM busybox\nCOPY ../secret /\n", {}),
        ("FROM busybox\nCOPY link /\n", {"link": ("symlink", "/etc/passwd")}),
        ("FROM busybox\nCOPY link/passwd /\n", {"link": ("symlink", "../../etc")}),
    ):
        with pytest.raises(BuildError, match="forbidden path outside the build context"):
            run_build(engine, {"Dockerfile": dockerfile, **files})


@pytest.mark.parametrize("entries", [
    {"../evil": "x"},
    {"/abs-evil": "x"},
    {"link": ("symlink", "OUTSIDE"), "link/evil": "x"},
])
def test_hostile_context_tar_is_refused_and_nothing_is_written_outside(engine, base, entries):
    outside = os.path.join(base, "outside")
    os.makedirs(outside, exist_ok=True)
    entries = {k: (("symlink", outside) if v == ("symlink", "OUTSIDE") else v) for k, v in entries.items()}
    tmp_before = set(os.listdir(engine.store.tmp_root))
    with pytest.raises(UnsafeArchive):
        run_build(engine, {"Dockerfile": "FROM busybox\n", **entries})
    assert os.listdir(outside) == []
    assert not os.path.exists(os.path.join(engine.config.root, "evil"))
    assert not os.path.exists("/abs-evil")
    assert set(os.listdir(engine.store.tmp_root)) == tmp_before  # The staging dir is gone too.


def test_parser_errors_name_the_line(engine):
    files = {"Dockerfile": "FROM busybox\n\n# comment\nRUN true\nRUNN false\n"}
    with pytest.raises(DockerfileError, match=r"^Dockerfile:5: unknown instruction: RUNN$"):
        run_build(engine, files)


def test_scratch_add_tar_heredoc_onbuild_and_target(engine):
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as tf:
        data = b"from the archive\n"
        info = tarfile.TarInfo("inner/file.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    dockerfile = """\
FROM busybox AS base
ONBUILD RUN echo triggered > /onbuild
COPY <<EOF /etc/motd
hello $HOSTNAME_UNSET-heredoc
EOF
RUN <<EOF
echo line1 > /script
echo line2 >> /script
EOF
ADD --chmod=600 payload.tar.gz /opt/
HEALTHCHECK --interval=5s --retries=2 CMD wget -q localhost || exit 1
STOPSIGNAL SIGINT

FROM base AS child
RUN cat /onbuild

FROM scratch AS tiny
COPY --from=base /script /script
"""
    image, events = run_build(engine, {"Dockerfile": dockerfile, "payload.tar.gz": payload.getvalue()},
                              target="child", tags=["child:1"], labels={"built.by": "berth"})
    log = text(events)
    assert "# Executing 1 build trigger\n" in log
    assert "triggered" in log
    assert "tiny" not in log
    config = image.config["config"]
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q localhost || exit 1"],
                                     "Interval": 5_000_000_000, "Retries": 2}
    assert config["StopSignal"] == "SIGINT"
    assert config["Labels"] == {"built.by": "berth"}
    assert "OnBuild" not in config
    code, out = run_image(engine, "child:1", "sh", "-c",
                          "cat /etc/motd /script /opt/inner/file.txt /onbuild; test -e /opt/payload.tar.gz || echo not-copied")
    assert code == 0, out
    assert "hello -heredoc\nline1\nline2\nfrom the archive\ntriggered\n" in out
    assert "not-copied" in out  # Extracted, not copied.

    tiny, _ = run_build(engine, {"Dockerfile": dockerfile, "payload.tar.gz": payload.getvalue()}, target="tiny")
    assert len(tiny.chain_ids) == 1
    assert tiny.config["history"][-1]["created_by"].startswith("/bin/sh -c #(nop) COPY file:")


def test_prune_cache_forgets_steps(engine, first):
    answer = prune_cache(engine)
    assert answer["CachesDeleted"]
    assert os.listdir(os.path.join(engine.config.root, "build-cache", "contexts")) == []  # kept contexts too
    assert answer["SpaceReclaimed"] >= 0
    _, events = run_build(engine, {"Dockerfile": "FROM busybox\nENV A=1\n"})
    assert "Using cache" not in text(events)
    assert engine.images.resolve("demo:1")  # Tagged images stay.


def test_cancelling_a_build_kills_its_run_container(engine):
    from runtime.errors import Cancelled
    import time

    flag = []

    def progress(event):
        if "Running in" in event.get("stream", ""):
            flag.append(True)

    started = time.monotonic()
    with pytest.raises(Cancelled):
        build(engine, context({"Dockerfile": "FROM busybox\nRUN sleep 30\n"}), progress=progress,
              cancelled=lambda: bool(flag))
    assert time.monotonic() - started < 10
    assert not engine.containers.list(all=True)
