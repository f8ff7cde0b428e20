"""System endpoints: /_ping, /version, /info."""

import datetime
import platform
import uuid

from django.conf import settings
from django.http import HttpResponse

from runtime.info import API_VERSION, ENGINE_VERSION, MIN_API_VERSION

from ..engine import get_engine, system_info
from .base import docker_endpoint, json_response


@docker_endpoint("GET")
def ping(request):
    """``GET|HEAD /_ping``: "OK", with the API version the CLI negotiates down to."""
    response = HttpResponse("" if request.method == "HEAD" else "OK", content_type="text/plain; charset=utf-8")
    response["Builder-Version"] = "1"
    response["Cache-Control"] = "no-cache, no-store, must-revalidate"
    response["Pragma"] = "no-cache"
    return response


def version_document() -> dict:
    """The body of ``GET /version`` (SystemVersion in the API spec)."""
    facts = system_info()
    python = f"python{platform.python_version()}"
    details = {
        "ApiVersion": API_VERSION,
        "Arch": facts["go_arch"],
        "BuildTime": "",
        "Experimental": "false",
        "GitCommit": "",
        "GoVersion": python,
        "KernelVersion": facts["kernel_version"],
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
    }
    return {
        "Platform": {"Name": f"Berth {ENGINE_VERSION}"},
        "Components": [
            {"Name": "Engine", "Version": ENGINE_VERSION, "Details": details},
            *[
                {"Name": name, "Version": facts[name]["version"],
                 "Details": {"GitCommit": facts[name]["commit"]}}
                for name in ("runc", "crun") if facts[name]["version"]
            ],
            {
                "Name": "conmon",
                "Version": facts["conmon"]["version"],
                "Details": {"GitCommit": facts["conmon"]["commit"]},
            },
        ],
        "Version": ENGINE_VERSION,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": python,
        "Os": "linux",
        "Arch": facts["go_arch"],
        "KernelVersion": facts["kernel_version"],
        "BuildTime": "",
    }


@docker_endpoint("GET")
def version(request):
    """``GET /version``."""
    return json_response(version_document())


def engine_counts() -> dict:
    """Container and image counts for ``docker info`` and the dashboard, from the models."""
    from containers.services import docker_info_counts as container_counts
    from images.services import docker_info_counts as image_counts

    return {**container_counts(), **image_counts()}


def engine_id() -> str:
    """A stable id for this engine, kept beside the database."""
    path = settings.DATA_DIR / "engine_id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = str(uuid.uuid4()).upper()
        path.write_text(value)
        return value


def info_document() -> dict:
    """The body of ``GET /info`` (SystemInfo in the API spec)."""
    facts = system_info()
    return {
        "ID": engine_id(),
        **engine_counts(),
        "Driver": facts["storage_driver"],
        "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"], ["Native Overlay Diff", "true"]],
        "DockerRootDir": facts["root"],
        "Plugins": {
            "Volume": ["local"],
            "Network": ["bridge", "host", "none"],
            "Authorization": None,
            "Log": ["k8s-file"],
        },
        "MemoryLimit": True,
        "SwapLimit": False,
        "KernelMemory": False,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": True,
        "CPUSet": True,
        "PidsLimit": True,
        "OomKillDisable": True,
        "IPv4Forwarding": True,
        "BridgeNfIptables": True,
        "BridgeNfIp6tables": True,
        "Debug": settings.DEBUG,
        "NFd": 0,
        "NGoroutines": 0,
        "SystemTime": datetime.datetime.now().astimezone().isoformat(),
        "LoggingDriver": "k8s-file",
        "CgroupDriver": facts["cgroup_driver"],
        "CgroupVersion": facts["cgroup_version"],
        "NEventsListener": 0,
        "KernelVersion": facts["kernel_version"],
        "OperatingSystem": facts["operating_system"],
        "OSVersion": facts["os_version"],
        "OSType": "linux",
        "Architecture": facts["architecture"],
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "AllowNondistributableArtifactsCIDRs": [],
            "AllowNondistributableArtifactsHostnames": [],
            "InsecureRegistryCIDRs": ["127.0.0.0/8"],
            "IndexConfigs": {},
            "Mirrors": [],
        },
        "NCPU": facts["ncpu"],
        "MemTotal": facts["mem_total"],
        "GenericResources": None,
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": facts["hostname"],
        "Labels": [f"berth.node={settings.NODE_NAME}"],
        "ExperimentalBuild": False,
        "ServerVersion": ENGINE_VERSION,
        "Runtimes": {name: {"path": name} for name in ("runc", "crun") if facts[name]["version"]},
        "DefaultRuntime": get_engine().containers.default_runtime(prepare=False),
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                  "Error": "", "RemoteManagers": None},
        "LiveRestoreEnabled": True,
        "Isolation": "default",
        "InitBinary": "",
        "ContainerdCommit": {"ID": "", "Expected": ""},
        "RuncCommit": {"ID": facts["runc"]["commit"], "Expected": facts["runc"]["commit"]},
        "InitCommit": {"ID": "", "Expected": ""},
        "SecurityOptions": ["name=seccomp,profile=default", "name=cgroupns"],
        "Warnings": [],
    }


@docker_endpoint("GET")
def info(request):
    """``GET /info``."""
    return json_response(info_document())
