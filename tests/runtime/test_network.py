"""Tests for runtime.network: real CNI plugins, bridges, namespaces and iptables, with busybox.

Traffic only goes to 127.0.0.1 and to the namespaces and bridges these tests make. Every object
has a per-run prefix (bridges ``bt<hex>...``, subnets picked at random in 10.200-249/16, leases
under the temp root) and is removed at the end: containers, then the networks' bridges, isolation
rules and leases (``NetworkManager.teardown``); the module checks that no veth, nat chain or lease
of its containers is left.
"""

import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time

import pytest

from runtime.containers import ContainerStore
from runtime.errors import AlreadyExists, EngineError, InvalidArgument, InvalidState, NotFound
from runtime.network import NetworkManager
from tests.runtime.network_support import (
    HTTPD,
    exec_out,
    free_port,
    http_get,
    lease_files,
    make_manager,
    wait_httpd,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/lib/cni/bridge"),
                                reason="runs real containers and CNI: needs root and containernetworking-plugins")

# The base and engine fixtures (and the ctr this module wraps) are in conftest.py.
ENGINE_DIR_PREFIX = "bn-"


@pytest.fixture(scope="module")
def env(engine):
    """The module's engine with a NetworkManager of its own (torn down before ``base`` goes)."""
    config = engine.config
    tag = secrets.token_hex(2)
    net = make_manager(config, engine.containers, tag)
    engine.containers.network = net
    yield engine, net, tag
    for record in engine.containers.list(all=True):
        engine.containers.remove(record.id, force=True)
    for doc in net.list():
        if doc["Name"] not in ("bridge", "host", "none"):
            net.remove(doc["Name"])
    net.teardown()
    bridges = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert f"bt{tag}" not in bridges


@pytest.fixture
def store(env) -> ContainerStore:
    return env[0].containers


@pytest.fixture
def net(env) -> NetworkManager:
    return env[1]


@pytest.fixture
def networks(net):
    made = []

    def make(name, **options):
        doc = net.create(name, **options)
        made.append(doc["Name"])
        return doc

    yield make
    for name in made:
        try:
            net.remove(name)
        except NotFound:
            pass


@pytest.fixture
def ctr(networks, ctr):
    # conftest's ctr (on this module's ``store``), set up after ``networks``: containers go
    # first at teardown, then their networks.
    return ctr


def test_a_published_port_answers_on_loopback_and_inspect_shows_it(store, net, ctr):
    port = free_port()
    record = ctr("sh", "-c", HTTPD, name="web1", port_bindings={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]})
    assert http_get(port) == f"hello from {record.id[:12]}\n"
    inspect = store.inspect("web1")
    settings = inspect["NetworkSettings"]
    assert settings["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    endpoint = settings["Networks"]["bridge"]
    subnet = ipaddress.ip_network(net.get("bridge")["IPAM"]["Config"][0]["Subnet"])
    assert ipaddress.ip_address(endpoint["IPAddress"]) in subnet and endpoint["IPAddress"] == settings["IPAddress"]
    assert endpoint["Gateway"] == str(next(subnet.hosts())) and len(endpoint["MacAddress"]) == 17
    assert endpoint["NetworkID"] == net.get("bridge")["Id"] and len(endpoint["EndpointID"]) == 64
    assert store.summary(store.get("web1"))["Ports"] == [
        {"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": port, "Type": "tcp"}]
    with open(os.path.join(store.root, record.id, "hosts")) as f:
        assert f.read().splitlines()[-1] == f"{endpoint['IPAddress']}\t{record.id[:12]}"
    assert net.get("bridge")["Containers"][record.id]["IPv4Address"] == f"{endpoint['IPAddress']}/24"
    # Published on 127.0.0.1 only: not through the gateway address.
    code, out = exec_out(store, record.id, "timeout", "2", "wget", "-qO-", f"http://{endpoint['Gateway']}:{port}/")
    assert code != 0
    store.stop(record.id, timeout=0)
    assert store.inspect("web1")["NetworkSettings"]["Ports"] == {}
    with pytest.raises(OSError):
        http_get(port, timeout=0.3)
    # A stopped container's port is free again: anything can bind it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_publish_all_picks_free_ports_and_port_ranges_map_one_to_one(store, ctr):
    record = ctr("sh", "-c", HTTPD, exposed_ports={"80/tcp": {}}, publish_all_ports=True)
    ports = store.inspect(record.id)["NetworkSettings"]["Ports"]["80/tcp"]
    assert ports[0]["HostIp"] == "0.0.0.0" and int(ports[0]["HostPort"]) > 1024
    assert "hello" in http_get(int(ports[0]["HostPort"]))
    # Published on every address: the container reaches itself through the gateway (hairpin).
    gateway = store.inspect(record.id)["NetworkSettings"]["Gateway"]
    code, out = exec_out(store, record.id, "timeout", "3", "wget", "-qO-", f"http://{gateway}:{ports[0]['HostPort']}/")
    assert "hello" in out
    first = free_port()
    while True:  # two free consecutive ports
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", first)), b.bind(("127.0.0.1", first + 1))
                break
            except OSError:
                first = free_port()
    ranged = ctr("sleep", "1000", port_bindings={"7000-7001/tcp": [{"HostIp": "127.0.0.1",
                                                                    "HostPort": f"{first}-{first + 1}"}]})
    got = store.inspect(ranged.id)["NetworkSettings"]["Ports"]
    assert got == {"7000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(first)}],
                   "7001/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(first + 1)}]}


UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(512)
    s.sendto(b"echo:" + data, peer)
"""


def test_a_udp_port_forwards(store, ctr):
    # Busybox has no UDP server (its nc has no -u): the host's python serves UDP inside the
    # container's network namespace, which is what the published port forwards to.
    port = free_port()
    record = ctr("sleep", "1000", port_bindings={"53/udp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]})
    sandbox = store.inspect(record.id)["NetworkSettings"]["SandboxKey"]
    server = subprocess.Popen(["nsenter", f"--net={sandbox}", "python3", "-c", UDP_ECHO], stdout=subprocess.PIPE,
                              start_new_session=True)
    try:
        assert server.stdout.readline() == b"ready\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(b"ping", ("127.0.0.1", port))
            data, peer = s.recvfrom(512)
        assert data == b"echo:ping" and peer == ("127.0.0.1", port)
    finally:
        server.kill()
        server.wait()


def test_a_taken_host_port_is_refused_before_the_container_starts(store, ctr):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        record = ctr("sleep", "1000", start=False,
                     port_bindings={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]})
        with pytest.raises(Exception, match=f"Bind for 127.0.0.1:{port} failed: port is already allocated"):
            store.start(record.id)
        after = store.get(record.id)
        assert after.state.value == "configured" and after.pid == 0
        assert "port is already allocated" in store.inspect(record.id)["State"]["Error"]
        # Another container of the engine holding the port: refused the same way.
        holder.close()
        ctr("sleep", "1000", port_bindings={"80/tcp": [{"HostIp": "", "HostPort": str(port)}]})
        with pytest.raises(Exception, match="port is already allocated"):
            store.start(record.id)
    finally:
        holder.close()


def test_containers_on_a_user_network_reach_each_other_by_name_and_alias(store, net, ctr, networks):
    doc = networks("front", labels={"team": "a"})
    assert doc["Driver"] == "bridge" and doc["Labels"] == {"team": "a"} and not doc["Internal"]
    a = ctr("sh", "-c", HTTPD, name="alpha", network_mode="front")
    net.connect("front", ctr("sleep", "1000", name="beta", start=False).id, aliases=["bee"])
    b = store.start("beta")
    # beta was connected with an alias while stopped; httpd in beta for alpha to fetch.
    store.exec(b.id, ["sh", "-c", HTTPD], detach=True)
    wait_httpd(store, a.id)
    wait_httpd(store, b.id)
    assert exec_out(store, b.id, "timeout", "3", "wget", "-qO-", "http://alpha/")[1] == f"hello from {a.id[:12]}\n"
    assert exec_out(store, a.id, "timeout", "3", "wget", "-qO-", "http://beta/")[1] == f"hello from {b.id[:12]}\n"
    assert exec_out(store, a.id, "timeout", "3", "wget", "-qO-", "http://bee/")[1] == f"hello from {b.id[:12]}\n"
    assert exec_out(store, a.id, "timeout", "3", "wget", "-qO-", f"http://{b.id[:12]}/")[1].startswith("hello")
    inspect = store.inspect("beta")["NetworkSettings"]["Networks"]["front"]
    assert inspect["Aliases"] == [b.id[:12], "bee"] and inspect["IPAddress"]
    assert set(net.get("front")["Containers"]) == {a.id, b.id}
    assert [d["Name"] for d in net.list({"label": "team=a"})] == ["front"]
    # Removing a network in use is refused in Docker's words; stopping beta takes it out of alpha's hosts.
    with pytest.raises(InvalidState, match="error while removing network: network front id .* has active endpoints"):
        net.remove("front")
    store.stop(b.id, timeout=0)
    code, out = exec_out(store, a.id, "cat", "/etc/hosts")
    assert "beta" not in out
    assert exec_out(store, a.id, "timeout", "2", "wget", "-qO-", "http://beta/")[0] != 0


def test_a_fixed_address_and_aliases_asked_at_create(store, net, ctr, networks):
    """docker run --network N --ip A --network-alias S (NetworkingConfig at create)."""
    doc = networks("fixed")
    subnet = ipaddress.IPv4Network(doc["IPAM"]["Config"][0]["Subnet"])
    wanted = str(subnet.network_address + 77)
    web = ctr("sh", "-c", HTTPD, name="fixedweb", network_mode="fixed", ipv4_address=wanted, network_aliases=["svc"])
    wait_httpd(store, web.id)
    settings = store.inspect(web.id)["NetworkSettings"]["Networks"]["fixed"]
    assert settings["IPAddress"] == wanted and settings["IPAMConfig"] == {"IPv4Address": wanted}
    assert settings["Aliases"] == [web.id[:12], "svc"]
    assert f"inet {wanted}/" in exec_out(store, web.id, "ip", "-4", "addr", "show", "eth0")[1]
    client = ctr("sleep", "1000", name="fixedclient", network_mode="fixed")
    assert exec_out(store, client.id, "timeout", "3", "wget", "-qO-", "http://svc/")[1] == f"hello from {web.id[:12]}\n"
    # The same address for another container: refused at its start, and it takes nothing with it.
    twin = ctr("true", name="fixedtwin", network_mode="fixed", ipv4_address=wanted, start=False)
    with pytest.raises(EngineError, match=f"Address already in use: {wanted}"):
        store.start(twin.id)
    assert exec_out(store, client.id, "timeout", "3", "wget", "-qO-", "http://svc/")[1].startswith("hello")
    # Refused at create, in Docker's words: outside the subnet, on the default bridge.
    with pytest.raises(InvalidArgument, match="does not belong to any of this network's subnets"):
        ctr("true", network_mode="fixed", ipv4_address="192.0.2.7", start=False)
    with pytest.raises(InvalidArgument, match="user specified IP address is supported on user defined networks only"):
        ctr("true", ipv4_address=wanted, start=False)
    with pytest.raises(InvalidArgument, match="network-scoped alias is supported only"):
        ctr("true", network_aliases=["x"], start=False)


def test_two_user_networks_cannot_reach_each_other_and_connect_joins_at_once(store, net, ctr, networks):
    networks("red")
    networks("blue")
    red = ctr("sh", "-c", HTTPD, name="redweb", network_mode="red")
    blue = ctr("sleep", "1000", name="bluebox", network_mode="blue")
    wait_httpd(store, red.id)
    red_ip = store.inspect(red.id)["NetworkSettings"]["Networks"]["red"]["IPAddress"]
    code, out = exec_out(store, blue.id, "timeout", "2", "wget", "-qO-", f"http://{red_ip}/")
    assert code != 0, out
    assert "redweb" not in exec_out(store, blue.id, "cat", "/etc/hosts")[1]
    # Connected to red while running: a second interface, and the names of red's members.
    net.connect("red", blue.id)
    code, out = exec_out(store, blue.id, "timeout", "3", "wget", "-qO-", "http://redweb/")
    assert code == 0 and out.startswith("hello"), out
    assert "bluebox" in exec_out(store, red.id, "cat", "/etc/hosts")[1]
    assert set(store.inspect(blue.id)["NetworkSettings"]["Networks"]) == {"blue", "red"}
    net.disconnect("red", blue.id)
    assert exec_out(store, blue.id, "timeout", "2", "wget", "-qO-", f"http://{red_ip}/")[0] != 0
    assert "bluebox" not in exec_out(store, red.id, "cat", "/etc/hosts")[1]
    assert set(store.inspect(blue.id)["NetworkSettings"]["Networks"]) == {"blue"}


def test_ps_shows_a_connect_and_a_disconnect_at_once(store, net, ctr, networks):
    """``docker ps`` keeps each container's networks between lists (summary_networks): a connect
    or a disconnect, which rewrites only the endpoint, still shows on the very next list."""
    networks("green")
    networks("amber")
    box = ctr("sleep", "1000", name="psbox", network_mode="green")

    def listed() -> set[str]:
        records = [r for r in store.list(all=True, shared=True) if r.id == box.id]
        return set(store.summaries(records)[0]["NetworkSettings"]["Networks"])

    time.sleep(1.2)  # files older than a second: what the list keeps between calls
    assert listed() == {"green"} and listed() == {"green"}
    net.connect("amber", box.id)
    assert listed() == {"green", "amber"}
    time.sleep(1.2)
    assert listed() == {"green", "amber"}
    net.disconnect("amber", box.id)
    assert listed() == {"green"}


def test_an_internal_network_has_no_way_out(store, ctr, networks):
    networks("vault", internal=True)
    inside = ctr("sleep", "1000", network_mode="vault")
    code, out = exec_out(store, inside.id, "ip", "route")
    assert "default" not in out


def test_links_write_hosts_and_docker_env(store, ctr):
    web = ctr("sh", "-c", HTTPD, name="linkweb", env=["FOO=bar"], exposed_ports={"80/tcp": {}, "53/udp": {}})
    client = ctr("sleep", "1000", name="client1", links=["linkweb:webalias"], extra_hosts=["extra.example:10.89.77.7"],
                 dns=["10.89.0.53"], dns_search=["example.test"], dns_options=["ndots:2"], hostname="client1")
    ip = store.inspect(web.id)["NetworkSettings"]["IPAddress"]
    own = store.inspect(client.id)["NetworkSettings"]["IPAddress"]
    hosts = exec_out(store, client.id, "cat", "/etc/hosts")[1].splitlines()
    assert hosts[-3:] == ["10.89.77.7\textra.example", f"{ip}\twebalias {web.id[:12]} linkweb", f"{own}\tclient1"]
    env = exec_out(store, client.id, "env")[1].splitlines()
    for line in ("WEBALIAS_NAME=/client1/webalias", f"WEBALIAS_PORT=udp://{ip}:53",
                 f"WEBALIAS_PORT_80_TCP=tcp://{ip}:80", f"WEBALIAS_PORT_80_TCP_ADDR={ip}",
                 "WEBALIAS_PORT_80_TCP_PORT=80", "WEBALIAS_PORT_80_TCP_PROTO=tcp", "WEBALIAS_ENV_FOO=bar",
                 f"WEBALIAS_PORT_53_UDP=udp://{ip}:53"):
        assert line in env
    assert not any(l.startswith("WEBALIAS_ENV_PATH=") for l in env)
    resolv = exec_out(store, client.id, "cat", "/etc/resolv.conf")[1]
    assert "nameserver 10.89.0.53" in resolv and "search example.test" in resolv and "options ndots:2" in resolv
    wait_httpd(store, web.id)
    assert exec_out(store, client.id, "timeout", "3", "wget", "-qO-", "http://webalias/")[1].startswith("hello")
    assert store.inspect(client.id)["NetworkSettings"]["Networks"]["bridge"]["Links"] == ["/linkweb:/client1/webalias"]
    store.stop(web.id, timeout=0)
    stopped = ctr("true", start=False, links=["linkweb:webalias"])
    with pytest.raises(Exception, match="Cannot link to a non running container: /linkweb AS"):
        store.start(stopped.id)


def test_network_verbs_follow_docker(net, networks, store):
    with pytest.raises(AlreadyExists, match="network with name bridge already exists"):
        net.create("bridge")
    with pytest.raises(InvalidState, match="bridge is a pre-defined network and cannot be removed"):
        net.remove("bridge")
    doc = networks("verbs", subnet="10.251.250.0/24")
    assert doc["IPAM"]["Config"] == [{"Subnet": "10.251.250.0/24", "Gateway": "10.251.250.1"}]
    with pytest.raises(AlreadyExists, match="Pool overlaps"):
        net.create("verbs2", subnet="10.251.250.128/25")
    assert net.get(doc["Id"][:10])["Name"] == "verbs"
    assert {d["Name"] for d in net.list({"type": "builtin"})} == {"bridge", "host", "none"}
    with pytest.raises(NotFound, match="network nope not found"):
        net.get("nope")
    networks("unused")
    pruned = net.prune()["NetworksDeleted"]
    assert {"verbs", "unused"} <= set(pruned) and "bridge" not in pruned
    with pytest.raises(NotFound):
        net.get("verbs")


def test_port_forwards_survive_a_worker_restart(env, store, ctr):
    engine, net, tag = env
    port = free_port()
    record = ctr("sh", "-c", HTTPD, port_bindings={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]})
    assert "hello" in http_get(port)
    # A new worker: new store and network objects on the same root (the old ones are forgotten).
    fresh = ContainerStore(engine.config, engine.images, engine.layers, network=None)
    fresh_net = NetworkManager(engine.config, fresh, bridge=net.default_bridge, subnet=net.default_subnet,
                               user_subnets=str(net.user_subnets), bridge_prefix=net.bridge_prefix,
                               ipam_dir=net.ipam_dir)
    fresh.network = fresh_net
    net.ports.release(record.id)  # the old worker's sockets die with it
    done = fresh_net.cleanup()
    assert record.id not in done["endpoints"]
    assert "hello" in http_get(port)
    assert fresh.inspect(record.id)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] == str(port)
    # The new worker holds the port again, and its stop releases the network.
    with pytest.raises(OSError):
        socket.socket().bind(("127.0.0.1", port))
    fresh.stop(record.id, timeout=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_cleanup_removes_what_a_killed_engine_left(env, store, net, ctr):
    engine, _, tag = env
    record = ctr("sleep", "1000", port_bindings={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(free_port())}]})
    ep = net._load_endpoint(record.id)
    att = ep["attachments"]["bridge"]
    veth = att["veth"]
    assert os.path.exists(f"/sys/class/net/{veth}")
    assert att["ip"] in lease_files(net, net.default_bridge)
    assert record.id in subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    # The engine dies and the container's processes with it; its record is lost too (a remove
    # interrupted after the directory went). Only the network's endpoint file is left.
    conmon = record.conmon_pid
    os.kill(record.pid, signal.SIGKILL)
    os.kill(conmon, signal.SIGKILL)
    time.sleep(0.2)
    store.runtime_of(record).delete(record.id, force=True)
    subprocess.run(["umount", "-l", os.path.join(store.root, record.id, "merged")], capture_output=True)
    shutil.rmtree(os.path.join(store.root, record.id))
    net.ports.release(record.id)
    fresh = ContainerStore(engine.config, engine.images, engine.layers)
    fresh_net = NetworkManager(engine.config, fresh, bridge=net.default_bridge, subnet=net.default_subnet,
                               bridge_prefix=net.bridge_prefix, ipam_dir=net.ipam_dir)
    done = fresh_net.cleanup()
    assert record.id in done["endpoints"]
    assert not os.path.exists(f"/sys/class/net/{veth}")
    assert att["ip"] not in lease_files(net, net.default_bridge)
    assert record.id not in subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert f"-s {att['ip']}/32" not in subprocess.run(["iptables", "-S", "CNI-FORWARD"], capture_output=True, text=True).stdout
    assert not os.path.exists(ep["netns"]) and net._load_endpoint(record.id) is None


def test_the_pool_takes_cni_off_the_start_path(store, net, ctr):
    net.start_pool(2)
    try:
        deadline = time.monotonic() + 10
        while len(net._ready_pool()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.perf_counter()
        record = ctr("true", start=False)
        store.start(record.id)
        store.wait(record.id, timeout=10)
        pooled = time.perf_counter() - started
        ep = net._load_endpoint(record.id)
        assert ep["attachments"] == {} and ep["netns"] == ""  # released at exit
        port = free_port()
        web = ctr("sh", "-c", HTTPD, port_bindings={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]})
        assert net._load_endpoint(web.id)["attachments"]["bridge"]["cni_id"].startswith("pool")
        assert "hello" in http_get(port)
    finally:
        net.stop_pool()
    assert net._ready_pool() == []
    net.pool_size = 0
    started = time.perf_counter()
    record = ctr("true", start=False)
    store.start(record.id)
    store.wait(record.id, timeout=10)
    unpooled = time.perf_counter() - started
    print(f"\nrun true: pooled {pooled * 1000:.0f} ms, without pool {unpooled * 1000:.0f} ms")


#
# Releases queued for the keeper (the CNI DEL off the exit path)
#


@pytest.fixture
def keeper_elsewhere(net):
    """Another process keeps the pool: the keeper lock is held (as a keeping process holds it) but
    no keeper thread runs here, so releases stay queued until the test lets go (``close()``)."""
    import fcntl

    fd = os.open(os.path.join(net.release_dir, ".keeper"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    holder = {"fd": fd}

    def close():
        if holder["fd"] >= 0:
            os.close(holder["fd"])
            holder["fd"] = -1

    holder["close"] = close
    yield holder
    close()
    net.finish_releases()


def nat_rules_of(cni_id: str) -> list[str]:
    dump = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    return [line for line in dump.splitlines() if cni_id in line]


def test_a_stop_queues_the_del_and_cleanup_finishes_one_a_dead_keeper_left(env, store, net, ctr, keeper_elsewhere):
    engine, _, tag = env
    record = ctr("sleep", "1000")
    ep = net._load_endpoint(record.id)
    att = ep["attachments"]["bridge"]
    assert att["ip"] in lease_files(net, net.default_bridge) and os.path.exists(f"/sys/class/net/{att['veth']}")
    store.stop(record.id, timeout=0)
    # The container is off the network at once...
    after = net._load_endpoint(record.id)
    assert after["attachments"] == {} and after["netns"] == "" and after["ports"] == []
    assert store.inspect(record.id)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == ""
    assert record.id not in net.get("bridge")["Containers"]
    # ...and its DEL waits in the queue, its namespace still mounted (the DEL needs it).
    pending = net._pending(record.id)
    assert len(pending) == 1
    assert os.path.ismount(ep["netns"]) and os.path.exists(f"/sys/class/net/{att['veth']}")
    assert att["ip"] in lease_files(net, net.default_bridge)
    # The keeping process dies before running it; the next worker's cleanup does.
    keeper_elsewhere["close"]()
    fresh = ContainerStore(engine.config, engine.images, engine.layers)
    fresh_net = NetworkManager(engine.config, fresh, bridge=net.default_bridge, subnet=net.default_subnet,
                               user_subnets=str(net.user_subnets), bridge_prefix=net.bridge_prefix,
                               ipam_dir=net.ipam_dir)
    assert fresh_net.cleanup()["releases"] == 1
    assert net._pending() == []
    assert not os.path.exists(f"/sys/class/net/{att['veth']}") and not os.path.exists(ep["netns"])
    assert att["ip"] not in lease_files(net, net.default_bridge)
    assert nat_rules_of(att["cni_id"]) == []
    assert f"-s {att['ip']}/32" not in subprocess.run(["iptables", "-S", "CNI-FORWARD"], capture_output=True,
                                                      text=True).stdout


def test_a_published_port_is_free_at_once_while_the_rest_of_the_del_is_queued(store, net, ctr, keeper_elsewhere):
    port = free_port()
    binding = {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    first = ctr("sh", "-c", HTTPD, port_bindings=binding)
    old = net._load_endpoint(first.id)["attachments"]["bridge"]
    assert http_get(port) == f"hello from {first.id[:12]}\n"
    store.stop(first.id, timeout=0)
    assert len(net._pending(first.id)) == 1
    # portmap's DEL ran at the stop: no DNAT rule of the old run is left, the port can be bound...
    assert [line for line in nat_rules_of(old["cni_id"]) if "dnat" in line.lower() or "CNI-DN" in line] == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    # ...and the next container publishing it is the one that answers.
    second = ctr("sh", "-c", HTTPD, port_bindings=binding)
    assert http_get(port) == f"hello from {second.id[:12]}\n"
    keeper_elsewhere["close"]()
    assert net.finish_releases() == 1
    assert nat_rules_of(old["cni_id"]) == []


def test_a_restart_and_network_rm_run_the_pending_del_first(store, net, ctr, networks, keeper_elsewhere):
    networks("quay")
    record = ctr("sh", "-c", HTTPD, name="quayweb", network_mode="quay")
    peer = ctr("sleep", "1000", network_mode="quay")
    bridge = net._bridge(net._find("quay"))
    first = net._load_endpoint(record.id)["attachments"]["quay"]
    assert first["cni_id"] == record.id  # no pool on a user network: the container's own id
    store.stop(record.id, timeout=0)
    assert len(net._pending(record.id)) == 1
    # The new run's ADD uses the same CNI id: the old DEL (which would take its lease and chains)
    # runs before it, not after.
    store.start(record.id)
    assert net._pending(record.id) == []
    now = net._load_endpoint(record.id)["attachments"]["quay"]
    assert now["ip"] in lease_files(net, bridge)
    wait_httpd(store, record.id)
    assert exec_out(store, peer.id, "timeout", "3", "wget", "-qO-", "http://quayweb/")[1].startswith("hello")
    # network rm with a stopped member's DEL still queued: the DEL first (it needs the bridge).
    store.stop(record.id, timeout=0)
    store.stop(peer.id, timeout=0)
    assert len(net._pending()) == 2
    net.remove("quay")
    assert net._pending() == []
    assert not os.path.exists(f"/sys/class/net/{bridge}") and not os.path.isdir(os.path.join(net.ipam_dir, bridge))
    assert nat_rules_of(record.id) == [] and nat_rules_of(peer.id) == []


def test_the_keeper_runs_queued_releases_in_the_background(store, net, ctr):
    net.start_pool(1)
    try:
        assert net._keeper_alive()
        record = ctr("sleep", "1000")
        ep = net._load_endpoint(record.id)
        veth = ep["attachments"]["bridge"]["veth"]
        store.stop(record.id, timeout=0)
        assert net._load_endpoint(record.id)["attachments"] == {}
        deadline = time.monotonic() + 20
        while net._pending() or os.path.exists(f"/sys/class/net/{veth}") or os.path.exists(ep["netns"]):
            assert time.monotonic() < deadline, "the keeper did not run the release"
            time.sleep(0.05)
    finally:
        net.stop_pool()
    assert not net._keeper_alive()
    # No keeper any more: a release runs in the stopping process, as before.
    record = ctr("sleep", "1000")
    veth = net._load_endpoint(record.id)["attachments"]["bridge"]["veth"]
    store.stop(record.id, timeout=0)
    assert net._pending() == [] and not os.path.exists(f"/sys/class/net/{veth}")


def test_a_child_forked_from_the_keeping_process_keeps_nothing_and_queues(net):
    net.start_pool(1)
    try:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # a Celery pool process, forked from the worker's main process
            code = 1
            try:
                os.close(read_end)
                answer = f"{net._keeper_fd} {net.pool_size} {net._pool_keeper} {net._keeper_alive()}"
                os.write(write_end, answer.encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            answer = f.read().decode()
        assert os.waitpid(pid, 0)[1] == 0
        # No lock and no pool of its own, and it sees the parent's keeper: it queues its releases.
        assert answer == "-1 0 None True"
        # The child's exit (its copy of the fd closed) did not drop the parent's lock.
        import fcntl

        probe = os.open(os.path.join(net.release_dir, ".keeper"), os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
    finally:
        net.stop_pool()
    assert not net._keeper_alive()


#
# The loopback guard (notes/cni.md §3.5)
#


def _guard_drops() -> int:
    """Packets the loopback guard (INPUT: to 127/8, not from 127/8, not DNATed: DROP) dropped so far."""
    out = subprocess.run(["iptables", "-w", "-L", "INPUT", "-v", "-n", "-x"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 9 and words[2] == "DROP" and words[7] == "!127.0.0.0/8" and words[8] == "127.0.0.0/8":
            return int(words[0])
    raise AssertionError(f"no loopback guard in INPUT:\n{out}")


def test_a_container_cannot_reach_a_host_service_bound_only_to_loopback(store, net, ctr):
    import http.server
    import threading

    class Secret(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"host-only secret\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Secret)
    secret_port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert "secret" in http_get(secret_port)
        # A port published on 127.0.0.1 makes portmap set route_localnet on the bridge: the kernel
        # then routes packets for 127/8 that arrive on it, which is the hole the guard closes.
        port = free_port()
        web = ctr("sh", "-c", HTTPD, port_bindings={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]})
        with open(f"/proc/sys/net/ipv4/conf/{net.default_bridge}/route_localnet") as f:
            assert f.read().strip() == "1"
        attacker = ctr("sleep", "1000")
        settings = store.inspect(attacker.id)["NetworkSettings"]
        gateway, sandbox = settings["Gateway"], settings["SandboxKey"]
        # Through the gateway's address: the service listens on 127.0.0.1 only.
        code, out = exec_out(store, attacker.id, "timeout", "3", "wget", "-qO-", f"http://{gateway}:{secret_port}/")
        assert code != 0 and "secret" not in out
        # A container with NET_ADMIN (done here from the host, in its namespace) sends 127.0.0.1 to
        # the gateway instead of its own loopback: the packets reach the host, and the guard drops them.
        for argv in (["ip", "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local"],
                     ["ip", "route", "del", "local", "127.0.0.1", "dev", "lo", "table", "local"],
                     ["ip", "route", "add", "127.0.0.1/32", "via", gateway, "dev", "eth0"],
                     ["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"],
                     ["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"],
                     # and takes the answers from 127.0.0.1 (its own lo address) on eth0
                     ["sysctl", "-qw", "net.ipv4.conf.eth0.accept_local=1"]):
            proc = subprocess.run(["nsenter", f"--net={sandbox}", *argv], capture_output=True, text=True)
            assert proc.returncode == 0 or "No such process" in proc.stderr, (argv, proc.stderr)
        route = subprocess.run(["nsenter", f"--net={sandbox}", "ip", "route", "get", "127.0.0.1"],
                               capture_output=True, text=True).stdout
        assert f"via {gateway}" in route, route
        dropped = _guard_drops()
        code, out = exec_out(store, attacker.id, "timeout", "3", "wget", "-qO-", f"http://127.0.0.1:{secret_port}/")
        assert code != 0 and "secret" not in out
        assert _guard_drops() > dropped  # it was the guard that stopped them
        # Control: with an exception above the guard for exactly this container and service port,
        # the same request gets through (so the guard is what closes the hole).
        exception = ["INPUT", "-s", settings["IPAddress"], "-d", "127.0.0.1", "-p", "tcp", "--dport",
                     str(secret_port), "-j", "ACCEPT"]
        subprocess.run(["iptables", "-w", "-I", *exception], check=True)
        try:
            code, out = exec_out(store, attacker.id, "timeout", "3", "wget", "-qO-", f"http://127.0.0.1:{secret_port}/")
        finally:
            subprocess.run(["iptables", "-w", "-D", *exception], check=True)
        assert code == 0 and out == "host-only secret\n", out
        # The published port still answers on the host's loopback, and from a container through
        # the gateway it is not published on.
        assert http_get(port) == f"hello from {web.id[:12]}\n"
    finally:
        server.shutdown()
        server.server_close()
