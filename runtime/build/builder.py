"""Dockerfile builds, as Docker's classic builder makes them: one image per step, and a step cache.

``build(engine, context_tar, ...)`` runs a build and returns the final image:

1. The context is unpacked into the build's own staging dir (runtime.build.context), the Dockerfile
   read from it and parsed (runtime.build.dockerfile), then ``.dockerignore`` applied.
2. Each stage up to ``target`` is built in order. Every step after FROM makes an image (untagged,
   "dangling", as the classic builder's intermediate images), whose config history gets the step:
   ``/bin/sh -c #(nop)  ENV A=b`` with ``empty_layer`` for metadata steps, ``/bin/sh -c <cmd>``
   for RUN, ``/bin/sh -c #(nop) COPY file:<hash> in <dest> `` for COPY.
3. RUN runs in a container of the step's image through ContainerStore (create, start, follow the
   log, wait), exactly as ``docker run`` does; the container's upper dir becomes the step's layer
   (``fsops.commit_layer``). COPY, ADD and WORKDIR write into an overlay mount of the step's image
   made under the staging dir (runtime.rootfs), whose upper dir becomes the layer the same way.
4. The cache: ``<root>/build-cache/<key>.json`` maps a step key (parent image id + the step's
   created_by after substitution, which for COPY/ADD holds a digest of the names, modes, link
   targets and contents of the files read) to the image it made. A hit whose image still exists
   is reused (`` ---> Using cache``). ``<root>/build-cache/contexts/`` keeps the last few unpacked
   contexts by the sha256 of their tar (runtime.build.context.ContextCache): a rebuild of an
   unchanged context reads them instead of unpacking the tar again.

Progress is the classic builder's JSON stream (``{"stream": ...}``, ``{"aux": {"ID": ...}}``,
``{"error": ..., "errorDetail": ...}``), so the Docker API can forward it unchanged. A failure is
reported as an ``error`` message and raised as ``BuildError`` (or the engine error it came from).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import secrets
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import BinaryIO, Callable, Iterable

from runtime import archive, rootpath
from runtime import spec as oci_spec
from runtime.build.context import (
    BuildContext,
    ContextCache,
    ContextError,
    extract_context,
    has_glob,
    plain_tar_digest,
    read_dockerignore,
    tree_digest,
)
from runtime.build.dockerfile import (
    Dockerfile,
    DockerfileError,
    Instruction,
    Stage,
    expand,
    expand_words,
    parse,
    parse_instruction,
)
from runtime.containers import ContainerConfig
from runtime.digest import Digest
from runtime.errors import Cancelled, EngineError, InvalidArgument, NotFound
from runtime.fsops import commit_layer
from runtime.images import ImageRecord, _decompress_into, _expand_port
from runtime.layers import chain_id_of
from runtime.manifest import MEDIA_TYPE_OCI_LAYER, host_platform
from runtime.reference import parse_reference
from runtime.rootfs import mount_rootfs, unmount_rootfs

__all__ = ["BuildError", "build", "prune_cache"]

DEFAULT_SHELL = ["/bin/sh", "-c"]
# Build args Docker accepts without an ARG and never warns about.
BUILTIN_ARGS = frozenset({"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
                          "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"})
MAX_DOCKERFILE = 4 * 1024 * 1024
# The creation time of the empty base of a FROM scratch stage: fixed, so it is one image.
_EPOCH = "1970-01-01T00:00:00Z"
_CHUNK = 1 << 20

Progress = Callable[[dict], None]


class BuildError(EngineError):
    """A build step failed; ``code`` is the exit code of a failed RUN (0 otherwise)."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


#
# The cache
#


class BuildCache:
    """``<root>/build-cache/<key hex>.json`` -> {"image", "created_by", "parent", "created"}."""

    def __init__(self, root: str):
        self.dir = os.path.join(root, "build-cache")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    @staticmethod
    def key(parent: str, created_by: str) -> str:
        return hashlib.sha256(json.dumps([parent, created_by]).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        try:
            with open(os.path.join(self.dir, key + ".json")) as f:
                return json.load(f).get("image")
        except (FileNotFoundError, ValueError):
            return None

    def put(self, key: str, image_id: str, parent: str, created_by: str) -> None:
        path = os.path.join(self.dir, key + ".json")
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump({"image": image_id, "parent": parent, "created_by": created_by, "created": _now()}, f)
        os.rename(tmp, path)

    def entries(self) -> list[tuple[str, dict]]:
        out = []
        for name in sorted(os.listdir(self.dir)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                with open(os.path.join(self.dir, name)) as f:
                    out.append((name[:-5], json.load(f)))
            except (OSError, ValueError):
                out.append((name[:-5], {}))
        return out

    def parents(self) -> dict[str, str]:
        """Image id -> the image its step started from (``docker history`` names the steps)."""
        out: dict[str, str] = {}
        for _, doc in self.entries():
            if isinstance(doc, dict) and isinstance(doc.get("image"), str) and isinstance(doc.get("parent"), str):
                out.setdefault(doc["image"], doc["parent"])
        return out


def prune_cache(engine) -> dict:
    """``docker builder prune``: drop every cache record, and the untagged images they kept that no
    container uses. Answers ``{"CachesDeleted": [...], "SpaceReclaimed": bytes}``."""
    cache = BuildCache(engine.config.root)
    ContextCache(os.path.join(cache.dir, "contexts")).clear()
    deleted, images = [], []
    for key, doc in cache.entries():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(cache.dir, key + ".json"))
        deleted.append(key)
        if doc.get("image"):
            images.append(doc["image"])
    reclaimed = 0
    for image_id in reversed(images):
        try:
            record = engine.images.get(image_id)
        except (NotFound, InvalidArgument):
            continue
        if record.repo_tags or engine.containers.image_in_use(str(record.id)):
            continue
        sizes = {}
        for chain in record.chain_ids:
            with contextlib.suppress(NotFound):
                sizes[str(chain)] = engine.layers.get(chain).size
        try:
            answer = engine.images.remove(str(record.id), in_use=engine.containers.image_in_use)
        except EngineError:
            continue
        reclaimed += sum(sizes.get(str(item.get("Deleted")), 0) for item in answer)
    return {"CachesDeleted": deleted, "SpaceReclaimed": reclaimed}


#
# The build
#


@dataclass
class _State:
    """One stage being built."""

    stage: Stage
    image: ImageRecord
    config: dict
    args: dict[str, str | None] = field(default_factory=dict)
    cmd_set: bool = False


def build(engine, context_tar: BinaryIO, *, dockerfile: str = "Dockerfile", tags: Iterable[str] = (),
          build_args: dict | None = None, target: str | None = None, no_cache: bool = False,
          pull: bool = False, labels: dict | None = None, progress: Progress | None = None,
          cancelled: Callable[[], bool] | None = None, network_mode: str = "bridge",
          on_image: Callable[[str], None] | None = None) -> ImageRecord:
    """Build the Dockerfile ``dockerfile`` of the context tar ``context_tar``; see the module doc.

    ``on_image(image_id)`` is called for every image the build adds (its steps' images, a scratch
    base, a pulled base) or tags, as it happens, also in a build that fails later: a caller keeping
    records of images needs to look at these only (a fully cached build adds none).
    """
    builder = _Builder(engine, progress=progress, cancelled=cancelled, no_cache=no_cache, pull=pull,
                       network_mode=network_mode, on_image=on_image)
    try:
        return builder.run(context_tar, dockerfile=dockerfile, tags=list(tags), build_args=dict(build_args or {}),
                           target=target, labels=dict(labels or {}))
    except EngineError as exc:
        message = str(exc)
        detail = {"message": message}
        if isinstance(exc, BuildError) and exc.code:
            detail["code"] = exc.code
        builder.emit({"error": message, "errorDetail": detail})
        raise


class _Builder:
    def __init__(self, engine, *, progress, cancelled, no_cache, pull, network_mode, on_image=None):
        self.engine = engine
        self.progress = progress
        self.on_image = on_image or (lambda image_id: None)
        self.cancelled = cancelled or (lambda: False)
        self.no_cache = no_cache
        self.pull = pull
        self.network_mode = network_mode
        self.cache = BuildCache(engine.config.root)
        self.staging = ""
        self.context: BuildContext | None = None
        self.df: Dockerfile | None = None
        self.stages: dict[str, ImageRecord] = {}
        self.stage_list: list[ImageRecord] = []
        self.used_args: set[str] = set()
        self.build_args: dict = {}
        self.meta_args: dict[str, str | None] = {}
        self._mounts = 0
        self._keep_context = False

    def emit(self, message: dict) -> None:
        if self.progress is not None:
            self.progress(message)

    def say(self, text: str) -> None:
        self.emit({"stream": text})

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled("the build was cancelled")

    #
    # The whole build
    #

    def run(self, context_tar, *, dockerfile, tags, build_args, target, labels) -> ImageRecord:
        refs = []
        for tag in tags:
            ref = parse_reference(tag)
            if ref.digest is not None:
                raise InvalidArgument(f"invalid tag {tag!r}: a build cannot be tagged with a digest")
            refs.append(ref)
        self.build_args = build_args
        self.staging = self.engine.store.tmp_dir("build-")
        contexts = ContextCache(os.path.join(self.cache.dir, "contexts"))
        try:
            with contextlib.ExitStack() as stack:
                # A context kept from an earlier build of the same tar is used as it is (read only).
                digest = plain_tar_digest(context_tar)
                kept = stack.enter_context(contexts.use(digest)) if digest else None
                self.context = kept or extract_context(context_tar, self.staging)
                image = self._build(dockerfile, target, labels, refs, kept is not None)
            if digest and kept is None and self._keep_context:
                contexts.keep(digest, self.context.root)
            return image
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _build(self, dockerfile, target, labels, refs, kept: bool) -> ImageRecord:
        """The build from its context on: the Dockerfile, .dockerignore, the stages, the tags."""
        name = dockerfile or "Dockerfile"
        try:
            source = self.context.read_file(name, MAX_DOCKERFILE)
        except ContextError:
            raise InvalidArgument(f"Cannot locate specified Dockerfile: {name}") from None
        self.df = parse(source, filename=posixpath.basename(name))
        if not kept:  # a kept context is one .dockerignore removed nothing from
            removed = self.context.apply_ignore(read_dockerignore(self.context.root))
            self._keep_context = not removed
        image = self._build_stages(target, labels)
        unused = sorted(k for k in self.build_args if k not in self.used_args and k not in BUILTIN_ARGS)
        if unused:
            self.say(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed\n")
        self.emit({"aux": {"ID": str(image.id)}})
        self.say(f"Successfully built {image.short_id}\n")
        record = None
        for ref in refs:
            record = self.engine.images.tag(str(image.id), ref.familiar)  # the image with its tags now
            self.on_image(str(image.id))
            self.say(f"Successfully tagged {ref.familiar}\n")
        return record or self.engine.images.get(str(image.id))

    def _build_stages(self, target: str | None, labels: dict) -> ImageRecord:
        df = self.df
        stages = df.stages
        if target:
            names = [s.name for s in stages]
            if target.lower() not in names:
                raise InvalidArgument(f"failed to reach build target {target} in Dockerfile")
            stages = stages[:names.index(target.lower()) + 1]
        for ins in df.meta_args:
            self._declare_args(ins, self.meta_args, {}, meta=True)
        extra = []
        if labels:
            label = Instruction(cmd="LABEL", original="LABEL " + " ".join(
                f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(labels.items())), line=0, end_line=0)
            label.args = [x for k, v in sorted(labels.items()) for x in (k, v)]
            label.literal = True  # type: ignore[attr-defined]
            extra = [label]
        total = sum(1 + len(s.instructions) for s in stages) + len(extra)
        step = 0
        image = None
        for index, stage in enumerate(stages):
            last = index == len(stages) - 1
            step += 1
            self.check_cancelled()
            self.say(f"Step {step}/{total} : {stage.from_instruction.original}\n")
            state = self._from(stage)
            for ins in stage.instructions + (extra if last else []):
                step += 1
                self.check_cancelled()
                self.say(f"Step {step}/{total} : {ins.original.splitlines()[0]}\n")
                self._dispatch(state, ins)
            image = state.image
            self.stage_list.append(image)
            if stage.name:
                self.stages[stage.name] = image
        return image

    #
    # FROM and the stage state
    #

    def _from(self, stage: Stage) -> _State:
        ins = stage.from_instruction
        env = {k: v for k, v in self.meta_args.items() if v is not None}
        base = expand(stage.base, env, self.df.escape, line=ins.line, filename=self.df.filename, used=self.used_args)
        platform = expand(stage.platform, env, self.df.escape, line=ins.line) if stage.platform else ""
        if platform:
            os_name, arch, _ = host_platform()
            wanted = platform.split("/")
            if wanted[0] != os_name or (len(wanted) > 1 and wanted[1] != arch):
                raise DockerfileError(f"--platform={platform} is not this host's platform ({os_name}/{arch})",
                                      ins.line, self.df.filename)
        if base.lower() == "scratch":
            image = self._scratch_image()
        elif base.lower() in self.stages:
            image = self.stages[base.lower()]
        else:
            image = self._base_image(base)
        self.say(f" ---> {image.short_id}\n")
        config = json.loads(json.dumps(image.config.get("config") or {}))
        state = _State(stage=stage, image=image, config=config)
        triggers = config.pop("OnBuild", None) or []
        if triggers:
            self.say(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}\n")
            for text in triggers:
                trigger = parse_instruction(text, ins.line, ins.line, self.df.escape, self.df.filename)
                self._dispatch(state, trigger)
        return state

    def _base_image(self, name: str) -> ImageRecord:
        if not self.pull:
            try:
                return self.engine.images.resolve(name)
            except NotFound:
                pass
        self.say(f"Pulling from {name}\n")
        record = self.engine.pull(name, progress=lambda event: None, cancelled=self.cancelled)
        self.on_image(str(record.id))
        return record

    def _scratch_image(self) -> ImageRecord:
        os_name, arch, variant = host_platform()
        config = {"architecture": arch, "os": os_name, "created": _EPOCH, "config": {},
                  "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
        if variant:
            config["variant"] = variant
        record = self.engine.images.add(_config_bytes(config), [], layer_descriptors=[])
        self.on_image(str(record.id))
        return record

    def _env(self, state: _State) -> dict[str, str]:
        """The variables a step substitutes: the stage's ARGs, overridden by its ENV."""
        env = {k: v for k, v in state.args.items() if v is not None}
        for item in state.config.get("Env") or []:
            key, _, value = item.partition("=")
            env[key] = value
        return env

    def _expand(self, state: _State, ins: Instruction, word: str) -> str:
        return expand(word, self._env(state), self.df.escape, line=ins.line, filename=self.df.filename,
                      used=set())

    def _error(self, ins: Instruction, message: str) -> DockerfileError:
        return DockerfileError(message, ins.line, self.df.filename)

    #
    # Steps
    #

    def _dispatch(self, state: _State, ins: Instruction) -> None:
        handler = getattr(self, "_do_" + ins.cmd.lower())
        try:
            handler(state, ins)
        except (DockerfileError, BuildError, Cancelled):
            raise
        except ContextError as exc:
            raise BuildError(f"{ins.cmd} failed: {exc}") from None
        except InvalidArgument as exc:
            raise self._error(ins, str(exc)) from None

    def _nop(self, state: _State, text: str) -> None:
        """Commit a metadata-only step (or reuse its cached image)."""
        created_by = "/bin/sh -c #(nop)  " + text
        self._step(state, created_by, lambda: self._commit(state, created_by))

    def _step(self, state: _State, created_by: str, make: Callable[[], ImageRecord]) -> None:
        parent = str(state.image.id)
        key = BuildCache.key(parent, created_by)
        if not self.no_cache:
            cached = self.cache.get(key)
            if cached:
                try:
                    record = self.engine.images.get(cached)
                except (NotFound, InvalidArgument):
                    record = None
                if record is not None:
                    self.say(" ---> Using cache\n")
                    self._advance(state, record)
                    return
        record = make()
        self.cache.put(key, str(record.id), parent, created_by)
        self._advance(state, record)

    def _advance(self, state: _State, record: ImageRecord) -> None:
        state.image = record
        state.config = json.loads(json.dumps(record.config.get("config") or {}))
        self.say(f" ---> {record.short_id}\n")

    def _do_env(self, state: _State, ins: Instruction) -> None:
        env = list(state.config.get("Env") or [])
        shown = []
        for key, raw in zip(ins.args[::2], ins.args[1::2]):
            key = self._expand(state, ins, key)
            value = self._expand(state, ins, raw)
            env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
            state.config["Env"] = env  # Later pairs see earlier ones, as in Docker.
            shown.append(f"{key}={value}")
        self._nop(state, "ENV " + " ".join(shown))

    def _do_label(self, state: _State, ins: Instruction) -> None:
        labels = dict(state.config.get("Labels") or {})
        shown = []
        literal = getattr(ins, "literal", False)
        for key, raw in zip(ins.args[::2], ins.args[1::2]):
            if not literal:
                key, raw = self._expand(state, ins, key), self._expand(state, ins, raw)
            labels[key] = raw
            shown.append(f"{key}={raw}")
        state.config["Labels"] = labels
        self._nop(state, "LABEL " + " ".join(shown))

    def _declare_args(self, ins: Instruction, target: dict, env: dict, meta: bool = False) -> list[str]:
        shown = []
        for name, default in zip(ins.args[::2], ins.args[1::2]):
            self.used_args.add(name)
            if name in self.build_args:
                value = self.build_args[name]
            elif default is not None:
                value = expand(default, {**env, **{k: v for k, v in target.items() if v is not None}},
                               self.df.escape, line=ins.line, filename=self.df.filename)
            elif not meta and name in self.meta_args:
                value = self.meta_args[name]
            else:
                value = None
            target[name] = value
            shown.append(name if default is None else f"{name}={default}")
        return shown

    def _do_arg(self, state: _State, ins: Instruction) -> None:
        env = self._env(state)
        shown = self._declare_args(ins, state.args, env)
        self._nop(state, "ARG " + " ".join(shown))

    def _shell_or_json(self, state: _State, ins: Instruction, args: list[str]) -> list[str]:
        if ins.json:
            return list(args)
        return list(state.config.get("Shell") or DEFAULT_SHELL) + ([args[0]] if args else [])

    def _do_cmd(self, state: _State, ins: Instruction) -> None:
        state.config["Cmd"] = self._shell_or_json(state, ins, ins.args)
        state.cmd_set = True
        self._nop(state, "CMD " + _go_list(state.config["Cmd"]))

    def _do_entrypoint(self, state: _State, ins: Instruction) -> None:
        state.config["Entrypoint"] = self._shell_or_json(state, ins, ins.args) if ins.args else None
        if not state.cmd_set:
            state.config["Cmd"] = None
        self._nop(state, "ENTRYPOINT " + _go_list(state.config["Entrypoint"] or []))

    def _do_expose(self, state: _State, ins: Instruction) -> None:
        ports = dict(state.config.get("ExposedPorts") or {})
        shown = []
        for word in ins.args:
            for spec in expand_words(word, self._env(state), self.df.escape, line=ins.line):
                for port in _expand_port(spec):
                    ports[port] = {}
                    shown.append(port)
        state.config["ExposedPorts"] = ports
        self._nop(state, "EXPOSE " + " ".join(shown))

    def _do_user(self, state: _State, ins: Instruction) -> None:
        state.config["User"] = self._expand(state, ins, ins.args[0])
        self._nop(state, "USER " + state.config["User"])

    def _do_volume(self, state: _State, ins: Instruction) -> None:
        volumes = dict(state.config.get("Volumes") or {})
        paths = []
        for word in ins.args:
            path = self._expand(state, ins, word) if not ins.json else self._expand(state, ins, word)
            if not path.strip():
                raise self._error(ins, "VOLUME specified can not be an empty string")
            volumes[path] = {}
            paths.append(path)
        state.config["Volumes"] = volumes
        self._nop(state, "VOLUME [" + " ".join(paths) + "]")

    def _do_stopsignal(self, state: _State, ins: Instruction) -> None:
        signal = self._expand(state, ins, ins.args[0])
        from runtime.containers import parse_signal
        parse_signal(signal)
        state.config["StopSignal"] = signal
        self._nop(state, "STOPSIGNAL " + signal)

    def _do_shell(self, state: _State, ins: Instruction) -> None:
        if not ins.args:
            raise self._error(ins, "SHELL requires at least one argument")
        state.config["Shell"] = list(ins.args)
        self._nop(state, "SHELL " + _go_list(ins.args))

    def _do_maintainer(self, state: _State, ins: Instruction) -> None:
        self._nop(state, "MAINTAINER " + ins.args[0])

    def _do_onbuild(self, state: _State, ins: Instruction) -> None:
        state.config["OnBuild"] = list(state.config.get("OnBuild") or []) + [ins.rest]
        self._nop(state, "ONBUILD " + ins.rest)

    def _do_healthcheck(self, state: _State, ins: Instruction) -> None:
        if ins.args == ["NONE"]:
            check = {"Test": ["NONE"]}
        else:
            test = ["CMD", *ins.args[1:]] if ins.json else ["CMD-SHELL", ins.args[1]]
            check = {"Test": test}
            for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                              ("start-interval", "StartInterval")):
                value = ins.flag(flag)
                if value is not None:
                    check[key] = _duration(value, ins, self.df.filename)
            retries = ins.flag("retries")
            if retries is not None:
                if not retries.isdigit() or int(retries) < 1:
                    raise self._error(ins, f"--retries must be at least 1, not {retries}")
                check["Retries"] = int(retries)
        state.config["Healthcheck"] = check
        self._nop(state, "HEALTHCHECK " + json.dumps(check, sort_keys=True))

    def _do_workdir(self, state: _State, ins: Instruction) -> None:
        path = self._expand(state, ins, ins.args[0])
        workdir = posixpath.normpath(posixpath.join(state.config.get("WorkingDir") or "/", path))
        state.config["WorkingDir"] = workdir
        created_by = "/bin/sh -c #(nop) WORKDIR " + workdir

        def make() -> ImageRecord:
            with self._rootfs(state.image) as (merged, upper, lowers):
                root_fd = os.open(merged, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    fd, _ = rootpath.open_dir(root_fd, rootpath.split_path(workdir), create=True)
                    os.close(fd)
                finally:
                    os.close(root_fd)
                return self._commit(state, created_by, upper=upper, lowers=lowers)

        self._step(state, created_by, make)

    #
    # RUN
    #

    def _do_run(self, state: _State, ins: Instruction) -> None:
        if ins.flags.get("mount") or ins.flags.get("security") or ins.flags.get("network"):
            raise self._error(ins, "RUN --mount, --network and --security need BuildKit; Berth's builder is the classic one")
        if ins.json:
            cmd = list(ins.args)
        else:
            text = ins.args[0]
            if ins.heredocs:
                first = ins.heredocs[0]
                if len(ins.heredocs) == 1 and text.strip() == f"<<{'-' if first.chomp else ''}{first.name}".strip() \
                        or re.fullmatch(r"<<-?\s*[\"']?" + re.escape(first.name) + r"[\"']?", text.strip()):
                    text = first.content
                else:
                    text = text + "\n" + "".join(h.content + h.name + "\n" for h in ins.heredocs)
            cmd = list(state.config.get("Shell") or DEFAULT_SHELL) + [text]
        arg_env = [f"{k}={v}" for k, v in sorted(state.args.items()) if v is not None]
        env_keys = {e.partition("=")[0] for e in state.config.get("Env") or []}
        run_env = [e for e in arg_env if e.partition("=")[0] not in env_keys]
        shown = " ".join(cmd)
        created_by = (f"|{len(arg_env)} {' '.join(arg_env)} " if arg_env else "") + shown
        self._step(state, created_by, lambda: self._run(state, cmd, run_env, created_by))

    def _run(self, state: _State, cmd: list[str], env: list[str], created_by: str) -> ImageRecord:
        containers = self.engine.containers
        record = containers.create(ContainerConfig(image=str(state.image.id), cmd=cmd, entrypoint=[], env=env,
                                                   network_mode=self.network_mode))
        cid = record.id
        self.say(f" ---> Running in {cid[:12]}\n")
        stop = threading.Event()
        killed = []

        def watch() -> None:
            while not stop.wait(0.2):
                if self.cancelled():
                    killed.append(True)
                    with contextlib.suppress(EngineError):
                        containers.kill(cid)
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        try:
            try:
                containers.start(cid)
            except EngineError as exc:
                code = containers.get(cid, sync=False).exit_code or 127
                raise BuildError(f"The command '{' '.join(cmd)}' returned a non-zero code: {code}: {exc}",
                                 code) from None
            watcher.start()
            for _, line, _ in containers.logs(cid, follow=True):
                self.say(line.decode("utf-8", "replace"))
            code = containers.wait(cid)
            if killed:
                raise Cancelled("the build was cancelled")
            if code != 0:
                raise BuildError(f"The command '{' '.join(cmd)}' returned a non-zero code: {code}", code)
            image = self.engine.images.get(str(state.image.id))
            lowers = [self.engine.layers.get(c).path for c in image.chain_ids]
            upper = os.path.join(containers.root, cid, "upper")
            container_config = dict(state.config, Cmd=cmd)
            result = self._commit(state, created_by, upper=upper, lowers=lowers,
                                  container_config=container_config, container_id=cid)
        finally:
            stop.set()
            if watcher.is_alive():
                watcher.join()
            self.say(f"Removing intermediate container {cid[:12]}\n")
            with contextlib.suppress(EngineError):
                containers.remove(cid, force=True, volumes=True)
        return result

    #
    # COPY and ADD
    #

    def _do_copy(self, state: _State, ins: Instruction) -> None:
        self._copy(state, ins, add=False)

    def _do_add(self, state: _State, ins: Instruction) -> None:
        self._copy(state, ins, add=True)

    def _copy(self, state: _State, ins: Instruction, add: bool) -> None:
        env = self._env(state)
        escape = self.df.escape
        if ins.json:
            words = [expand(w, env, escape, line=ins.line) for w in ins.args]
        else:
            words = []
            for w in ins.args:
                words += expand_words(w, env, escape, line=ins.line) if not w.startswith("<<") else [w]
        if len(words) < 2:
            raise self._error(ins, f"{ins.cmd} requires at least two arguments")
        sources, dest = words[:-1], words[-1]
        if ins.flags.get("link") or ins.flags.get("parents") or ins.flags.get("exclude") or ins.flags.get("checksum"):
            raise self._error(ins, f"{ins.cmd} --link, --parents, --exclude and --checksum need BuildKit")
        chown = ins.flag("chown")
        chown = expand(chown, env, escape, line=ins.line) if chown else ""
        chmod = ins.flag("chmod")
        mode = None
        if chmod:
            chmod = expand(chmod, env, escape, line=ins.line)
            if not re.fullmatch(r"[0-7]{3,4}", chmod):
                raise self._error(ins, f"invalid chmod parameter {chmod!r}: use octal like 755")
            mode = int(chmod, 8)
        from_name = ins.flag("from")
        if from_name and add:
            raise self._error(ins, "ADD does not take --from")
        workdir = state.config.get("WorkingDir") or "/"
        dest_path = dest if dest.startswith("/") else posixpath.join(workdir, dest)
        dest_is_dir = dest.endswith("/") or dest.endswith("/.") or dest in (".", "")

        heredocs = {h.name: h for h in ins.heredocs}
        for s in sources:
            if s.startswith(("http://", "https://", "git@")) and add:
                raise self._error(ins, f"ADD from a URL ({s}) is not supported by Berth's builder")

        source_image = None
        if from_name:
            from_name = expand(from_name, env, escape, line=ins.line)
            source_image = self._from_image(from_name, ins)

        h = hashlib.sha256()
        kinds = []
        plan = []  # (kind, name): "heredoc", "context" or "image"
        for src in sources:
            marker = re.fullmatch(r"<<-?[\"']?([A-Za-z0-9_.-]+)[\"']?", src)
            if marker and marker.group(1) in heredocs:
                doc = heredocs[marker.group(1)]
                content = _expand_heredoc(doc.content, env) if doc.expand else doc.content
                h.update(b"heredoc\0" + doc.name.encode() + b"\0" + content.encode())
                plan.append(("heredoc", doc.name, content))
                kinds.append("file")
                continue
            if source_image is not None:
                h.update(f"image\0{source_image.id}\0{src}\0".encode())
                plan.append(("image", src, None))
                kinds.append("multi" if has_glob(src) else "file")
                continue
            names = self.context.glob(src) if has_glob(src) else [src]
            if not names:
                raise BuildError(f"{ins.cmd} failed: no source files were specified")
            for name in names:
                parent_fd, leaf, st = self.context.resolve(name)
                try:
                    tree_digest(parent_fd, leaf, st, h, name.lstrip("/") or ".")
                finally:
                    os.close(parent_fd)
                kinds.append("dir" if stat.S_ISDIR(st.st_mode) else "file")
                plan.append(("context", name, None))
        h.update(f"\0{chown}\0{chmod}\0".encode())
        kind = kinds[0] if len(kinds) == 1 else "multi"
        if len(plan) > 1:
            dest_is_dir = True
        created_by = f"/bin/sh -c #(nop) {ins.cmd} {kind}:{h.hexdigest()} in {dest_path} "

        def make() -> ImageRecord:
            with contextlib.ExitStack() as stack:
                merged, upper, lowers = stack.enter_context(self._rootfs(state.image))
                src_root = None
                if source_image is not None:
                    src_root = stack.enter_context(self._rootfs(source_image))[0]
                root_fd = os.open(merged, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                stack.callback(os.close, root_fd)
                if chown:
                    user = oci_spec.resolve_user(merged, chown)
                    uid = user.uid
                    gid = user.gid if ":" in chown else (user.gid if not chown.split(":")[0].isdigit() else user.uid)
                else:
                    uid = gid = 0
                writer = _Writer(root_fd, uid, gid, mode)
                writer.copy(plan, dest_path, dest_is_dir, self.context, src_root, add=add, staging=self.staging)
            return self._commit(state, created_by, upper=upper, lowers=lowers)

        self._step(state, created_by, make)

    def _from_image(self, name: str, ins: Instruction) -> ImageRecord:
        if name.lower() in self.stages:
            return self.stages[name.lower()]
        if name.isdigit():
            index = int(name)
            if index < len(self.stage_list):
                return self.stage_list[index]
            raise self._error(ins, f"invalid from flag value {name}: no stage {index} before this one")
        return self._base_image(name)

    #
    # Mounts and commits
    #

    @contextlib.contextmanager
    def _rootfs(self, image: ImageRecord):
        """Mount the image's layers with a fresh upper dir under the staging dir."""
        self._mounts += 1
        directory = os.path.join(self.staging, f"m{self._mounts}")
        lowers = [self.engine.layers.get(c).path for c in image.chain_ids]
        merged = mount_rootfs(directory, lowers, links_dir=self.engine.containers.links_dir)
        try:
            yield merged, os.path.join(directory, "upper"), lowers
        finally:
            unmount_rootfs(directory)

    def _commit(self, state: _State, created_by: str, *, upper: str | None = None, lowers: list | None = None,
                container_config: dict | None = None, container_id: str = "") -> ImageRecord:
        engine = self.engine
        parent = state.image
        layers = [engine.layers.get(c) for c in parent.chain_ids]
        descriptors = [dict(d) for d in parent.layers]
        empty = True
        new_chains, new_blobs = [], set()
        try:
            if upper is not None:
                path = os.path.join(self.staging, f"layer-{secrets.token_hex(4)}.tar")
                try:
                    with open(path, "wb") as raw:
                        hashing = _HashingWriter(raw)
                        count = commit_layer(upper, hashing, lower_dirs=lowers)
                    if count:
                        empty = False
                        diff_id = hashing.digest()
                        chain = chain_id_of(parent.top_chain_id, diff_id)
                        if not engine.layers.exists(chain):
                            new_chains.append(chain)
                        with open(path, "rb") as f:
                            layer = engine.layers.apply(f, chain_id=chain, parent=parent.top_chain_id,
                                                        expected_diff_id=diff_id)
                        if not engine.store.has_blob(diff_id):
                            new_blobs.add(diff_id)
                            engine.images._ingest_file(path, diff_id)
                        layers.append(layer)
                        descriptors.append({"digest": diff_id, "media_type": MEDIA_TYPE_OCI_LAYER,
                                            "size": os.path.getsize(path)})
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            created = _now()
            entry = {"created": created, "created_by": created_by}
            if empty:
                entry["empty_layer"] = True
            parent_config = parent.config
            nop_cmd = ["/bin/sh", "-c", created_by.removeprefix("/bin/sh -c ")]
            config = {
                "architecture": parent.architecture or parent_config.get("architecture") or host_platform()[1],
                "os": parent.os or parent_config.get("os") or "linux",
                "created": created,
                "config": _clean(state.config),
                "container_config": _clean(container_config or dict(state.config, Cmd=nop_cmd)),
                "rootfs": {"type": "layers", "diff_ids": [str(x.diff_id) for x in layers]},
                "history": list(parent_config.get("history") or []) + [entry],
            }
            if container_id:
                config["container"] = container_id
            if parent.variant:
                config["variant"] = parent.variant
            record = engine.images.add(_config_bytes(config), layers, layer_descriptors=descriptors)
        except BaseException:
            if new_chains or new_blobs:
                engine.images._discard(new_chains, new_blobs)
            raise
        self.on_image(str(record.id))
        return record


class _Writer:
    """Writes COPY/ADD sources into the mounted rootfs ``root_fd`` (every path resolved in scope)."""

    def __init__(self, root_fd: int, uid: int, gid: int, mode: int | None):
        self.root_fd = root_fd
        self.uid, self.gid, self.mode = uid, gid, mode

    def copy(self, plan, dest: str, dest_is_dir: bool, context: BuildContext, src_root: str | None, *,
             add: bool, staging: str) -> None:
        parts = rootpath.split_path(dest)
        if not dest_is_dir:
            with rootpath.resolve(self.root_fd, parts, follow_final=True, must_exist=False, create_dirs=True) as res:
                if res.stat is not None and stat.S_ISDIR(res.stat.st_mode):
                    dest_is_dir = True
        if not dest_is_dir and len(plan) == 1 and plan[0][0] == "context":
            parent_fd, leaf, st = context.resolve(plan[0][1])
            if stat.S_ISDIR(st.st_mode):
                dest_is_dir = True
            os.close(parent_fd)
        if dest_is_dir:
            dest_fd, _ = rootpath.open_dir(self.root_fd, parts, create=True)
        else:
            dest_fd, _ = rootpath.open_dir(self.root_fd, parts[:-1], create=True)
        try:
            for kind, name, content in plan:
                if kind == "heredoc":
                    target = name if dest_is_dir else parts[-1]
                    self._write_bytes(dest_fd, target, content.encode(), 0o644)
                elif kind == "context":
                    parent_fd, leaf, st = context.resolve(name)
                    try:
                        self._place(parent_fd, leaf, st, dest_fd, dest_is_dir, parts, add, staging)
                    finally:
                        os.close(parent_fd)
                else:
                    self._from_root(src_root, name, dest_fd, dest_is_dir, parts, staging)
        finally:
            os.close(dest_fd)

    def _from_root(self, src_root: str, name: str, dest_fd: int, dest_is_dir: bool, parts, staging) -> None:
        root_fd = os.open(src_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            names = [name]
            if has_glob(name):
                ctx = BuildContext(src_root)
                names = ctx.glob(name)
                if not names:
                    raise ContextError(f"no source files were specified ({name})")
            for one in names:
                try:
                    res = rootpath.resolve(root_fd, rootpath.split_path(one), follow_final=True)
                except NotFound:
                    raise ContextError(f"stat {one}: file does not exist in the source image") from None
                with res:
                    if res.leaf is None:
                        fd = os.dup(res.parent_fd)
                        try:
                            self._copy_dir_contents(fd, dest_fd)
                        finally:
                            os.close(fd)
                    else:
                        self._place(res.parent_fd, res.leaf, res.stat, dest_fd, dest_is_dir, parts, False, staging)
        finally:
            os.close(root_fd)

    def _place(self, parent_fd, leaf, st, dest_fd, dest_is_dir, parts, add, staging) -> None:
        if leaf is None or stat.S_ISDIR(st.st_mode):
            fd = os.open(leaf, _DIR_FLAGS, dir_fd=parent_fd) if leaf is not None else os.dup(parent_fd)
            try:
                self._copy_dir_contents(fd, dest_fd)
            finally:
                os.close(fd)
            return
        if add and stat.S_ISREG(st.st_mode) and _is_archive(parent_fd, leaf):
            self._extract(parent_fd, leaf, dest_fd, staging)
            return
        target = leaf if dest_is_dir else parts[-1]
        self._copy_node(parent_fd, leaf, st, dest_fd, target)

    def _copy_dir_contents(self, src_fd: int, dest_fd: int) -> None:
        for name in sorted(os.listdir(src_fd)):
            st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
            self._copy_node(src_fd, name, st, dest_fd, name)

    def _mode(self, st) -> int:
        return self.mode if self.mode is not None else stat.S_IMODE(st.st_mode)

    def _clear(self, dest_fd: int, name: str, keep_dir: bool) -> None:
        try:
            existing = os.stat(name, dir_fd=dest_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(existing.st_mode):
            if keep_dir:
                return
            raise ContextError(f"cannot replace directory {name} with a file")
        os.unlink(name, dir_fd=dest_fd)

    def _copy_node(self, src_fd: int, name: str, st, dest_fd: int, target: str) -> None:
        if stat.S_ISDIR(st.st_mode):
            self._clear(dest_fd, target, keep_dir=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(target, 0o755, dir_fd=dest_fd)
            child_dest = os.open(target, _DIR_FLAGS, dir_fd=dest_fd)
            child_src = os.open(name, _DIR_FLAGS, dir_fd=src_fd)
            try:
                self._copy_dir_contents(child_src, child_dest)
                os.fchown(child_dest, self.uid, self.gid)
                os.fchmod(child_dest, self._mode(st))
                os.utime(child_dest, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(child_src)
                os.close(child_dest)
        elif stat.S_ISREG(st.st_mode):
            self._clear(dest_fd, target, keep_dir=False)
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
            try:
                out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=dest_fd)
                try:
                    while chunk := os.read(src, _CHUNK):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(out, view):]
                    os.fchown(out, self.uid, self.gid)
                    os.fchmod(out, self._mode(st))
                    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(out)
            finally:
                os.close(src)
        elif stat.S_ISLNK(st.st_mode):
            self._clear(dest_fd, target, keep_dir=False)
            os.symlink(os.readlink(name, dir_fd=src_fd), target, dir_fd=dest_fd)
            os.chown(target, self.uid, self.gid, dir_fd=dest_fd, follow_symlinks=False)
        # Sockets, fifos and devices are not copied (as Docker's copier skips them).

    def _write_bytes(self, dest_fd: int, target: str, data: bytes, mode: int) -> None:
        self._clear(dest_fd, target, keep_dir=False)
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=dest_fd)
        try:
            os.write(out, data)
            os.fchown(out, self.uid, self.gid)
            os.fchmod(out, self.mode if self.mode is not None else mode)
        finally:
            os.close(out)

    def _extract(self, parent_fd: int, leaf: str, dest_fd: int, staging: str) -> None:
        """ADD of a local archive: unpack it into the destination (entries keep their owners)."""
        tmp = os.path.join(staging, f"add-{secrets.token_hex(4)}.tar")
        src = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            with os.fdopen(src, "rb") as f, open(tmp, "wb") as out:
                _decompress_into(f, out, 8 * 1024 * 1024 * 1024)
            with open(tmp, "rb") as f:
                archive.apply_tar(f, f"/proc/self/fd/{dest_fd}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _is_archive(parent_fd: int, leaf: str) -> bool:
    fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        head = os.pread(fd, 512, 0)
    finally:
        os.close(fd)
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")):
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


class _HashingWriter:
    def __init__(self, out):
        self._out = out
        self._hash = hashlib.sha256()

    def write(self, data) -> int:
        self._hash.update(data)
        return self._out.write(data)

    def digest(self) -> Digest:
        return Digest.from_hex(self._hash.hexdigest())


def _clean(config: dict) -> dict:
    return {k: v for k, v in config.items() if v is not None}


def _config_bytes(config: dict) -> bytes:
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


def _go_list(items: list[str]) -> str:
    """How Docker's classic builder shows a list in created_by: ``["sh" "-c" "x"]``."""
    return "[" + " ".join(json.dumps(i) for i in items) + "]"


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
          "h": 3_600_000_000_000}


def _duration(text: str, ins: Instruction, filename: str) -> int:
    """A Go duration (``30s``, ``1m30s``) in nanoseconds."""
    pos, total = 0, 0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += int(float(match.group(1)) * _UNITS[match.group(2)])
        pos = match.end()
    if pos != len(text) or not text:
        raise DockerfileError(f"invalid duration {text!r}", ins.line, filename)
    return total


def _expand_heredoc(text: str, env: dict) -> str:
    """``$VAR`` and ``${VAR}`` in an unquoted COPY heredoc (quotes are content there)."""
    return re.sub(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))",
                  lambda m: env.get(m.group(1) or m.group(2), ""), text)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
