"""Benchmark: a cold `docker pull` of a ~300 MB, 5-layer image, Berth against the real Docker engine.

Run by hand, as root, with the project's virtualenv (see bench/README.md)::

    .venv/bin/python bench/pull.py [--runs 3]

What it does:

1. Builds the test image once, offline, and caches it under ``bench/.cache/`` (git-ignored): a busybox
   layer plus four layers of ~70 MB each, mixing random (incompressible) files and text files of
   varied sizes (a few thousand files per layer), gzip level 6, as a Docker schema 2 image.
2. Starts Debian's ``docker-registry`` on a loopback port (storage also cached) and pushes the image.
3. Starts Docker's own ``dockerd`` (Debian's docker.io) with a private ``--data-root`` and socket in a
   temp dir, and a live Berth (private Redis, Celery worker, Daphne; as tests/live.py starts it) with
   a private data dir and RUNTIME_ROOT.
4. Runs ``docker pull`` against each, interleaved, ``--runs`` times: each run is cold (the image is
   removed with ``docker rmi`` first and its layers checked gone), timed from command start to exit,
   while a sampler adds up VmRSS over the daemon's process tree every 50 ms.
5. Prints a table (median and min seconds, Berth/Docker ratio, peak and idle RSS), stops everything
   it started, and removes its temp dirs.

This is not a test: nothing here runs in the suite.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime import manifest as m  # noqa: E402
from runtime.layers import chain_ids  # noqa: E402
from runtime.manifest import Descriptor  # noqa: E402
from runtime.registry import RegistryClient  # noqa: E402
from tests.support import registry as support  # noqa: E402
from tests.support.dockerd import stop_daemon  # noqa: E402
from tests.support.dockerd import unmount_under as _unmount_under  # noqa: E402

DEFAULT_CACHE = ROOT / "bench" / ".cache"
REPOSITORY = "bench/pull"
TAG = "latest"
# Bump when the generator below changes, so an old cached image is not reused.
# 2: entries in directory-walk order, as real layers have them (1 went round-robin over directories).
IMAGE_FORMAT = 2
EPOCH = support.EPOCH
SAMPLE_INTERVAL = 0.05


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def stop_profilers(spies) -> None:
    """End py-spy recordings (SIGINT makes them write their output), killing one that hangs."""
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def finish_tempdir(tempdir: str, loop, keep: bool) -> None:
    """A bench's last step: its loop filesystem unmounted, then its temp dir kept (--keep) or gone."""
    if loop is not None:
        loop.stop()
    if keep:
        log(f"kept the logs in {tempdir}/logs" + ("" if loop else f" and the data in {tempdir}"))
    else:
        _unmount_under(tempdir)
        shutil.rmtree(tempdir, ignore_errors=True)


#
# The image
#

_WORDS_SEED = 4242


def _vocabulary(rng: random.Random, n: int = 4000) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    words = set()
    while len(words) < n:
        words.add("".join(rng.choices(letters, weights, k=rng.randint(2, 11))))
    return sorted(words)


def _text_pool(rng: random.Random, size: int) -> bytes:
    """Pseudo-text (lines of words, Zipf-ish frequencies): gzip gets it to about a third."""
    words = _vocabulary(rng)
    weights = [1 / (i + 1) for i in range(len(words))]
    out = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(words, weights, k=rng.randint(4, 16)))
        if rng.random() < 0.1:
            line = "    " + line + ";"
        out.append(line)
        total += len(line) + 1
    return ("\n".join(out) + "\n").encode()[:size]


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(round(2 ** rng.uniform(low.bit_length() - 1, high.bit_length() - 1)))


def _layer_files(index: int, target: int) -> list[tuple[str, str, int, int]]:
    """The plan of one layer: (path, kind "text"/"random", size, mode), ``target`` bytes in all.

    A quarter of the bytes in many small files (100 B - 64 KB), the rest in fewer bigger ones
    (64 KB - 8 MB); each file is text or random bytes with even odds.
    """
    rng = random.Random(index * 7919)
    files = []
    small_budget = target // 4
    total = 0
    n = 0
    while total < target:
        if total < small_budget:
            size = _log_uniform(rng, 100, 64 << 10)
        else:
            size = _log_uniform(rng, 64 << 10, 8 << 20)
        size = min(size, target - total) or 1
        kind = "random" if rng.random() < 0.5 else "text"
        suffix = ".bin" if kind == "random" else rng.choice([".txt", ".py", ".js", ".h", ".json"])
        path = f"opt/bench{index}/d{n % 37:02d}/s{(n // 37) % 11}/f{n:05d}{suffix}"
        mode = 0o755 if rng.random() < 0.05 else 0o644
        files.append((path, kind, size, mode))
        total += size
        n += 1
    # In the order a directory walk (docker build, tar) writes them: each directory's entries together.
    return sorted(files)


class _HashingFile:
    """A write-only file that hashes and counts what goes through it, then writes it on."""

    def __init__(self, out):
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()


def _write_layer(index: int, target: int, out_path: Path) -> tuple[str, str, int, int, int]:
    """Write layer ``index`` gzipped to ``out_path``; return (digest, diff_id, size, tar size, files)."""
    plan = _layer_files(index, target)
    rng = random.Random(index * 104729)
    pool = _text_pool(random.Random(_WORDS_SEED + index), 4 << 20)
    with open(out_path, "wb") as raw:
        compressed = _HashingFile(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=6, mtime=0, filename="") as gz:
            plain = _HashingFile(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                dirs = set()
                for path, kind, size, mode in plan:
                    parts = path.split("/")
                    for i in range(1, len(parts)):
                        d = "/".join(parts[:i])
                        if d not in dirs:
                            dirs.add(d)
                            info = tarfile.TarInfo(d)
                            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
                            tar.addfile(info)
                    if kind == "random":
                        data = rng.randbytes(size)
                    else:
                        start = rng.randrange(0, max(1, len(pool) - size))
                        data = pool[start:start + size]
                        while len(data) < size:
                            data += pool[: size - len(data)]
                    info = tarfile.TarInfo(path)
                    info.size, info.mode, info.mtime = size, mode, EPOCH
                    tar.addfile(info, io.BytesIO(data))
                # A few symlinks, as real trees have.
                for n in range(0, len(plan), 97):
                    info = tarfile.TarInfo(f"opt/bench{index}/link{n:05d}")
                    info.type, info.linkname, info.mtime = tarfile.SYMTYPE, plan[n][0].split("/", 2)[2], EPOCH
                    tar.addfile(info)
    digest = "sha256:" + compressed.hash.hexdigest()
    diff_id = "sha256:" + plain.hash.hexdigest()
    return digest, diff_id, compressed.size, plain.size, len(plan)


@dataclass
class BenchImage:
    """The image as cached on disk in skopeo's ``dir:`` layout: manifest.json and blobs by hex."""

    path: Path
    manifest: bytes
    config: bytes
    layers: list[dict]  # {"digest", "size", "diff_id", "tar_size", "files"}

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()

    def blob_path(self, digest: str) -> Path:
        return self.path / digest.split(":", 1)[1]

    def describe(self) -> str:
        compressed = sum(layer["size"] for layer in self.layers)
        uncompressed = sum(layer["tar_size"] for layer in self.layers)
        files = sum(layer["files"] for layer in self.layers)
        return (f"{len(self.layers)} layers, {compressed / 1e6:.0f} MB compressed, "
                f"{uncompressed / 1e6:.0f} MB uncompressed, {files} files")


def build_image(cache: Path, layer_mb: int, extra_layers: int = 4) -> BenchImage:
    """Build the benchmark image into ``cache`` (or reuse the one built before with the same knobs)."""
    key = f"v{IMAGE_FORMAT}-{extra_layers}x{layer_mb}MB"
    path = cache / f"image-{key}"
    meta_path = path / "bench.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return BenchImage(path, (path / "manifest.json").read_bytes(),
                          path.joinpath(meta["config"].split(":", 1)[1]).read_bytes(), meta["layers"])
    log(f"building the benchmark image ({key}) into {path} (once)...")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    started = time.monotonic()
    layers = []
    tar, gz = support.busybox_layer()
    digest = "sha256:" + hashlib.sha256(gz).hexdigest()
    (path / digest.split(":", 1)[1]).write_bytes(gz)
    layers.append({"digest": digest, "size": len(gz), "diff_id": "sha256:" + hashlib.sha256(tar).hexdigest(),
                   "tar_size": len(tar), "files": 2})
    for index in range(1, extra_layers + 1):
        tmp = path / f"layer-{index}.tmp"
        digest, diff_id, size, tar_size, files = _write_layer(index, layer_mb * 1_000_000, tmp)
        tmp.rename(path / digest.split(":", 1)[1])
        layers.append({"digest": digest, "size": size, "diff_id": diff_id, "tar_size": tar_size,
                       "files": files})
        log(f"  layer {index}: {tar_size / 1e6:.0f} MB tar, {size / 1e6:.0f} MB gzipped, {files} files")
    config = json.dumps({
        "architecture": support.host_architecture(), "os": "linux", "created": support.CREATED,
        "config": {"Env": [support.DEFAULT_PATH], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in layers]},
        "history": [{"created": support.CREATED, "created_by": f"bench layer {i}"}
                    for i in range(len(layers))],
    }, sort_keys=True).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    (path / config_digest.split(":", 1)[1]).write_bytes(config)
    manifest = m.Manifest(
        config=Descriptor(m.MEDIA_TYPE_DOCKER_CONFIG, config_digest, len(config)),
        layers=tuple(Descriptor(m.MEDIA_TYPE_DOCKER_LAYER_GZIP, layer["digest"], layer["size"])
                     for layer in layers),
        media_type=m.MEDIA_TYPE_DOCKER_MANIFEST,
    ).to_json()
    (path / "manifest.json").write_bytes(manifest)
    (path / "version").write_text("Directory Transport Version: 1.1\n")
    meta_path.write_text(json.dumps({"config": config_digest, "layers": layers}, indent=2))
    log(f"  built in {time.monotonic() - started:.0f}s")
    return BenchImage(path, manifest, config, layers)


def push_image(client: RegistryClient, image: BenchImage) -> None:
    """Push what the registry lacks, then the manifest."""
    digests = [image.config_digest] + [layer["digest"] for layer in image.layers]
    for digest in digests:
        if client.blob_exists(REPOSITORY, digest):
            continue
        path = image.blob_path(digest)
        with open(path, "rb") as f:
            client.upload_blob(REPOSITORY, digest, path.stat().st_size, f)
    client.put_manifest(REPOSITORY, TAG, image.manifest, m.MEDIA_TYPE_DOCKER_MANIFEST)


#
# Memory: the sum of VmRSS over a process tree, sampled
#


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: ppid comes after the last ")".
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def tree_pids(root: int) -> list[int]:
    children = _children_map()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0  # gone, or a kernel thread


def tree_rss_kb(root: int) -> int:
    return sum(rss_kb(pid) for pid in tree_pids(root))


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User and system CPU time of a process tree, its reaped children's included."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime are fields 14-17 of stat(5); fields[0] here is field 3.
        total += sum(int(x) for x in fields[11:15])
    return total / _TICK


class RssSampler:
    """Samples the tree's total VmRSS every SAMPLE_INTERVAL seconds, in a thread; keeps the peak."""

    def __init__(self, root: int):
        self.root = root
        self.peak_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.root))
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


#
# The two engines
#


class LoopFilesystem:
    """A fresh ext4 (with its journal) on a loop device over a sparse file, for both engines' data.

    Why: the root filesystem of some hosts (ours: ext4 without a journal) makes every file creation
    scan past the inodes deleted in the last minutes (ext4's ``recently_deleted``), about 1 ms per file
    right after a cold run deleted the previous image's thousands, which swamps what we measure. A
    new journaled ext4 is what a normal host has. ``--fs tmp`` measures on the temp dir instead.
    """

    def __init__(self, workdir: str, size_gb: int = 8):
        self.image = os.path.join(workdir, "fs.img")
        self.mountpoint = os.path.join(workdir, "mnt")
        self.device = None
        os.makedirs(self.mountpoint)
        with open(self.image, "wb") as f:
            f.truncate(size_gb << 30)
        self.device = _run(["losetup", "--find", "--show", "--direct-io=on", self.image]).strip()
        try:
            # Initialise the inode tables and journal now, not in a background thread during the runs.
            _run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", self.device])
            _run(["mount", "-t", "ext4", self.device, self.mountpoint])
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if os.path.ismount(self.mountpoint):
            _unmount_under(self.mountpoint)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
            self.device = None
        try:
            os.unlink(self.image)
        except FileNotFoundError:
            pass


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@dataclass
class Side(ABC):
    """One engine under test, driven by the docker CLI."""

    name: str
    env: dict
    pid: int  # root of the process tree whose memory we sample
    reference: str
    times: list[float] = field(default_factory=list)
    peaks_kb: list[int] = field(default_factory=list)
    idle_kb: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def docker(self, *args, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        result = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.name}: docker {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result

    def image_present(self) -> bool:
        return self.docker("image", "inspect", self.reference, check=False).returncode == 0

    def make_cold(self) -> None:
        """Remove the image (and so its layers) and check nothing of it is left."""
        if self.image_present():
            self.docker("rmi", "-f", self.reference)
        self.check_cold()

    @abstractmethod
    def check_cold(self) -> None:
        ...

    def pull_once(self, image: BenchImage, profile: str | None = None,
                  counted: bool = True) -> tuple[float, int, int]:
        """One cold pull: (seconds from command start to exit, peak tree RSS KiB, idle RSS KiB before).

        With ``profile`` (a file name), py-spy records the daemon's process tree during the pull
        (raw collapsed stacks, one line per stack; the profile run is slower and not counted).
        """
        self.make_cold()
        subprocess.run(["sync"], check=True)
        time.sleep(0.5)
        idle = tree_rss_kb(self.pid)
        spy = None
        if profile:
            spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                                    "record", "--pid", str(self.pid), "--subprocesses", "--threads", "--idle",
                                    "--nonblocking", "--rate", "200", "--format", "raw", "--output", profile],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)
        cpu_before = tree_cpu_seconds(self.pid)
        with RssSampler(self.pid) as sampler:
            started = time.monotonic()
            result = self.docker("pull", self.reference)
            elapsed = time.monotonic() - started
        cpu = tree_cpu_seconds(self.pid) - cpu_before
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            log(f"{self.name}: profile of a {elapsed:.2f}s pull written to {profile}")
            return elapsed, sampler.peak_kb, idle
        if "Downloaded newer image" not in result.stdout:
            raise RuntimeError(f"{self.name}: the pull was not cold:\n{result.stdout[-2000:]}")
        image_id = self.docker("image", "inspect", "--format", "{{.Id}}", self.reference).stdout.strip()
        if image_id != image.config_digest:
            raise RuntimeError(f"{self.name}: pulled image id {image_id}, expected {image.config_digest}")
        if counted:
            self.times.append(elapsed)
            self.peaks_kb.append(sampler.peak_kb)
            self.idle_kb.append(idle)
            self.cpu.append(cpu)
        return elapsed, sampler.peak_kb, idle


class DockerSide(Side):
    # No bridge and no iptables: this dockerd touches no host network (bench/run_bridge.py passes others).
    NETWORK_ARGS = ("--iptables=false", "--ip-masq=false", "--bridge=none")

    def __init__(self, workdir: str, logdir: str, registry_host: str, reference: str,
                 network_args: tuple[str, ...] = NETWORK_ARGS):
        self.workdir = workdir
        os.makedirs(workdir)
        self.data_root = os.path.join(workdir, "data")
        sock = os.path.join(workdir, "docker.sock")
        self.log_path = os.path.join(logdir, "dockerd.log")
        argv = ["dockerd", "--data-root", self.data_root, "--exec-root", os.path.join(workdir, "exec"),
                "--pidfile", os.path.join(workdir, "docker.pid"), "--host", f"unix://{sock}",
                "--insecure-registry", registry_host, *network_args]
        with open(self.log_path, "wb") as logf:
            self.popen = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        env = os.environ.copy()
        env.update({"DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": os.path.join(workdir, "cli")})
        for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
            env.pop(name, None)
        super().__init__("docker", env, self.popen.pid, reference)
        try:
            deadline = time.monotonic() + 60
            while subprocess.run(["docker", "version"], env=env, capture_output=True).returncode != 0:
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dockerd did not start:\n{Path(self.log_path).read_text()[-3000:]}")
                time.sleep(0.2)
            self.version = self.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
            self.driver = self.docker("info", "--format", "{{.Driver}}").stdout.strip()
        except BaseException:
            self.stop()
            raise

    def check_cold(self) -> None:
        layerdb = os.path.join(self.data_root, "image", self.driver, "layerdb", "sha256")
        left = os.listdir(layerdb) if os.path.isdir(layerdb) else []
        if left:
            raise RuntimeError(f"docker: layers left after rmi: {left}")

    def stop(self) -> None:
        stop_daemon(self.popen, self.workdir)


class BerthSide(Side):
    def __init__(self, workdir: str, logdir: str, reference: str, image: BenchImage):
        from tests import live

        self.workdir = workdir
        self.image = image
        self.runtime_root = os.path.join(workdir, "runtime")
        os.environ.update({
            "BERTH_DATA_DIR": os.path.join(workdir, "var"),
            "RUNTIME_ROOT": self.runtime_root,
            "RUNTIME_RUN_ROOT": os.path.join(workdir, "run"),
            "REDIS_URL": f"redis://127.0.0.1:{live.free_port()}/0",
            "BERTH_NODE": "bench",
            "DJANGO_SETTINGS_MODULE": "project.settings",
        })
        os.makedirs(workdir)
        self.logdir = Path(logdir)
        self.processes = [live.start_redis(self.logdir)]
        try:
            server = live.start_live_server(self.logdir)
            self.processes += server.processes
            self.worker = next(p for p in server.processes if p.name == "worker")
            env = server.docker_env(Path(workdir) / "cli")
            super().__init__("berth", env, self.worker.popen.pid, reference)
            self.docker("images")
        except BaseException:
            self.stop()
            raise

    def check_cold(self) -> None:
        layers_dir = os.path.join(self.runtime_root, "layers")
        blobs_dir = os.path.join(self.runtime_root, "blobs", "sha256")
        chains = {c.hex for c in chain_ids([layer["diff_id"] for layer in self.image.layers])}
        left = [n for n in os.listdir(layers_dir) if n in chains] if os.path.isdir(layers_dir) else []
        ours = {layer["digest"].split(":", 1)[1] for layer in self.image.layers}
        blobs = [n for n in os.listdir(blobs_dir) if n in ours] if os.path.isdir(blobs_dir) else []
        if left or blobs:
            raise RuntimeError(f"berth: left after rmi: layers {left}, blobs {blobs}")

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


#
# Report
#


def _mb(kb: float) -> str:
    return f"{kb / 1024:.0f}"


def report(sides: list[Side], image: BenchImage, runs: int, warmup: int, docker_version: str) -> str:
    lines = [
        f"image: {image.describe()}",
        f"runs: {runs} cold pulls each, interleaved, after {warmup} uncounted; dockerd {docker_version}; "
        f"{os.cpu_count()} CPUs",
        "",
        "| engine | median s | min s | runs (s) | CPU s | peak RSS MB | idle RSS MB | growth MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for side in sides:
        peak = max(side.peaks_kb)
        idle = statistics.median(side.idle_kb)
        growth = max(p - i for p, i in zip(side.peaks_kb, side.idle_kb))
        lines.append(
            f"| {side.name} | {statistics.median(side.times):.2f} | {min(side.times):.2f} | "
            f"{' '.join(f'{t:.2f}' for t in side.times)} | {statistics.median(side.cpu):.2f} | "
            f"{_mb(peak)} | {_mb(idle)} | {_mb(growth)} |"
        )
    by_name = {side.name: side for side in sides}
    if "berth" in by_name and "docker" in by_name:
        b, d = by_name["berth"], by_name["docker"]
        ratio_median = statistics.median(b.times) / statistics.median(d.times)
        ratio_min = min(b.times) / min(d.times)
        verdict = "meets" if ratio_median <= 0.7 else "misses"
        lines += ["", f"Berth/Docker: {ratio_median:.2f} (medians), {ratio_min:.2f} (mins); "
                      f"target <= 0.70: {verdict}"]
    lines += ["", "RSS is the sum of VmRSS over the daemon's process tree (docker: dockerd and its "
                  "children, containerd included; berth: the Celery worker and its pool processes), "
                  "sampled every 50 ms; "
                  "growth = peak during a pull minus idle just before it. CPU s: median user+system time "
                  "of that tree during a pull (the registry's own is not counted)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="cold pulls per engine (default 3)")
    parser.add_argument("--only", choices=("berth", "docker"), help="measure one engine only")
    parser.add_argument("--warmup", type=int, default=1,
                        help="uncounted cold pulls per engine first (default 1): a fresh daemon's first pull "
                             "pays one-off costs (imports, first connections) that a running one does not")
    parser.add_argument("--layer-mb", type=int, default=70,
                        help="uncompressed MB per generated layer (default 70)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="where the image and the registry's storage are kept (default bench/.cache)")
    parser.add_argument("--fs", choices=("loop", "tmp"), default="loop",
                        help="where the engines keep their data: a fresh journaled ext4 on a loop device "
                             "(default) or the temp dir's own filesystem")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    parser.add_argument("--profile", metavar="FILE",
                        help="first run an extra, uncounted Berth pull under py-spy (pip install py-spy in "
                             "the venv) and write its raw stacks to FILE")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (dockerd and Berth's worker need it)")
    if Path(sys.executable).parent.resolve() != (ROOT / ".venv" / "bin").resolve():
        log(f"note: not the project's virtualenv ({sys.executable}); tests/live.py starts the worker with it")

    # A SIGTERM ends the run through the finally blocks below, as Ctrl-C does.
    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)

    image = build_image(args.cache, args.layer_mb)
    log(f"image: {image.describe()}")
    tempdir = tempfile.mkdtemp(prefix="berth-bench-")
    workdir = tempdir
    registry = None
    loop = None
    sides: list[Side] = []
    try:
        if args.fs == "loop":
            loop = LoopFilesystem(tempdir)
            workdir = loop.mountpoint
            log(f"engines' data on a fresh ext4 at {workdir} ({loop.device})")
        logdir = os.path.join(tempdir, "logs")
        os.makedirs(logdir)
        registry = support.start_registry(str(args.cache / "registry"))
        log(f"registry on {registry.host}; pushing (only what it lacks)...")
        push_image(registry.client(), image)
        reference = f"{registry.host}/{REPOSITORY}:{TAG}"
        docker_version = "-"
        if args.only != "berth":
            log("starting dockerd...")
            docker_side = DockerSide(os.path.join(workdir, "docker"), logdir, registry.host, reference)
            sides.append(docker_side)
            docker_version = f"{docker_side.version} ({docker_side.driver})"
        if args.only != "docker":
            log("starting Berth (redis, worker, daphne)...")
            sides.append(BerthSide(os.path.join(workdir, "berth"), logdir, reference, image))
        for side in sides:
            for _ in range(args.warmup):
                elapsed, _, _ = side.pull_once(image, counted=False)
                log(f"warm-up {side.name:6}: {elapsed:6.2f}s (not counted)")
        berth_side = next((side for side in sides if side.name == "berth"), None)
        if args.profile and berth_side is not None:
            berth_side.pull_once(image, profile=os.path.abspath(args.profile))
        for run in range(args.runs):
            # Alternate who goes first, so neither always follows the other's disk writes.
            order = sides if run % 2 == 0 else list(reversed(sides))
            for side in order:
                elapsed, peak, idle = side.pull_once(image)
                log(f"run {run + 1}/{args.runs} {side.name:6}: {elapsed:6.2f}s  peak RSS {_mb(peak)} MB "
                    f"(idle {_mb(idle)} MB)")
        for side in sides:
            side.make_cold()
        print(report(sides, image, args.runs, args.warmup, docker_version))
        return 0
    finally:
        for side in reversed(sides):
            side.stop()
        if registry is not None:
            registry.stop()
        finish_tempdir(tempdir, loop, args.keep)


if __name__ == "__main__":
    sys.exit(main())
