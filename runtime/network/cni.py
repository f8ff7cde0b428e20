"""Running a CNI conflist by hand (libcni's algorithm, notes/cni.md §2).

ADD: each plugin in order, with ``name``/``cniVersion`` of the list, the ``runtimeConfig`` keys its
``capabilities`` ask for, and from the second on the previous plugin's result as ``prevResult``;
on a failure the whole list is DELeted. DEL: the plugins in reverse order, each with the stored ADD
result, going on past errors (DEL is idempotent).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from runtime.errors import EngineError

CNI_VERSION = "1.0.0"
PLUGIN_TIMEOUT = 60.0


class CNIError(EngineError):
    """A plugin failed: its message (``msg`` and ``details`` of the CNI error)."""


def conflist(name: str, bridge: str, subnet: str, gateway: str, data_dir: str, *,
             default_route: bool = True, ip_masq: bool = True) -> dict:
    """The network config Berth keeps: bridge (host-local IPAM) + portmap + firewall."""
    ipam = {"type": "host-local", "dataDir": data_dir,
            "ranges": [[{"subnet": subnet, "gateway": gateway}]]}
    if default_route:
        ipam["routes"] = [{"dst": "0.0.0.0/0"}]
    return {"cniVersion": CNI_VERSION, "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": ip_masq, "hairpinMode": True,
         "ipam": ipam},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        {"type": "firewall", "backend": "iptables"},
    ]}


class CNI:
    def __init__(self, plugin_dirs=("/usr/lib/cni", "/opt/cni/bin")):
        self.plugin_dirs = [d for d in plugin_dirs if os.path.isdir(d)] or list(plugin_dirs)
        self.timings: list[tuple[str, str, float]] = []

    def _find(self, kind: str) -> str:
        for directory in self.plugin_dirs:
            path = os.path.join(directory, kind)
            if os.access(path, os.X_OK):
                return path
        raise CNIError(f"CNI plugin {kind!r} not found in {':'.join(self.plugin_dirs)}")

    def _env(self, command: str, cid: str, netns: str, ifname: str, args: str = "") -> dict:
        path = os.environ.get("PATH", "")
        for extra in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
            if extra not in path.split(":"):
                path = f"{path}:{extra}" if path else extra
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
               "CNI_PATH": ":".join(self.plugin_dirs), "PATH": path}
        env["CNI_ARGS"] = "IgnoreUnknown=1" + (f";{args}" if args else "")
        return env

    def exec_plugin(self, command: str, plugin: dict, net: dict, runtime_config: dict, prev: dict | None,
                    cid: str, netns: str, ifname: str, args: str = "") -> dict | None:
        conf = {k: v for k, v in plugin.items()}
        conf["name"] = net["name"]
        conf["cniVersion"] = net["cniVersion"]
        wanted = {k for k, on in (plugin.get("capabilities") or {}).items() if on}
        selected = {k: v for k, v in (runtime_config or {}).items() if k in wanted}
        if selected:
            conf["runtimeConfig"] = selected
        if prev is not None:
            conf["prevResult"] = prev
        started = time.perf_counter()
        try:
            proc = subprocess.run([self._find(plugin["type"])], input=json.dumps(conf).encode(),
                                  env=self._env(command, cid, netns, ifname, args), capture_output=True,
                                  timeout=PLUGIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise CNIError(f"CNI plugin {plugin['type']} {command} timed out") from None
        self.timings.append((command, plugin["type"], time.perf_counter() - started))
        del self.timings[:-200]
        if proc.returncode != 0:
            try:
                doc = json.loads(proc.stdout or b"{}")
                message = doc.get("msg") or ""
                if doc.get("details"):
                    message += f": {doc['details']}"
            except ValueError:
                message = ""
            message = message or proc.stderr.decode("utf-8", "replace").strip() or f"exit {proc.returncode}"
            raise CNIError(f"CNI plugin {plugin['type']} {command} failed: {message}")
        out = proc.stdout.strip()
        return json.loads(out) if out else None

    def add(self, net: dict, runtime_config: dict, cid: str, netns: str, ifname: str = "eth0", *,
            args: str = "", prev: dict | None = None, only: tuple[str, ...] | None = None) -> dict:
        """ADD the list (or only the plugins of types in ``only``, chained after ``prev``)."""
        result = prev
        try:
            for plugin in net["plugins"]:
                if only is not None and plugin["type"] not in only:
                    continue
                result = self.exec_plugin("ADD", plugin, net, runtime_config, result, cid, netns, ifname, args)
        except CNIError:
            done = net if only is None else {**net, "plugins": [p for p in net["plugins"] if p["type"] in only]}
            self.delete(done, runtime_config, cid, netns, ifname, result=result)
            raise
        return result

    def delete(self, net: dict, runtime_config: dict, cid: str, netns: str, ifname: str = "eth0", *,
               result: dict | None = None) -> list[str]:
        """DEL the list in reverse order; returns the errors (it never stops at one)."""
        errors = []
        for plugin in reversed(net["plugins"]):
            try:
                self.exec_plugin("DEL", plugin, net, runtime_config, result, cid, netns, ifname)
            except CNIError as exc:
                errors.append(str(exc))
        return errors
