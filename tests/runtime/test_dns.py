"""The embedded DNS's messages (runtime/network/dns.py): what it reads of a query, what it answers."""

import socket
import struct
import threading

import pytest

from runtime.network.dns import (
    RCODE_REFUSED,
    DnsServer,
    Query,
    host_upstreams,
    parse_upstream,
    reverse_address,
)


def query(name: str, qtype: int = 1, flags: int = 0x0100, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def test_an_a_query_gets_its_addresses_with_the_question_and_id():
    q = Query(query("Web.Example"))
    assert (q.name, q.qtype) == ("web.example", 1)
    answer = q.answer(["10.90.0.2", "10.90.0.3"])
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", answer[:12])
    assert (qid, qd, an, ns, ar) == (0x1234, 1, 2, 0, 0)
    assert flags & 0x8000 and flags & 0x0100 and flags & 0x000F == 0  # an answer, RD kept, NOERROR
    assert answer[12:12 + len(q.question)] == q.question
    records = answer[12 + len(q.question):]
    assert socket.inet_ntoa(records[12:16]) == "10.90.0.2" and socket.inet_ntoa(records[28:32]) == "10.90.0.3"


def test_other_types_get_an_empty_answer_and_errors_their_code():
    q = Query(query("web", qtype=28))  # AAAA of a known name: no record, no error (resolvers move on)
    assert struct.unpack("!HH", q.answer(["10.90.0.2"])[4:8]) == (1, 0)
    refused = Query(query("elsewhere.test")).answer(rcode=RCODE_REFUSED)
    assert struct.unpack("!H", refused[2:4])[0] & 0x000F == RCODE_REFUSED


@pytest.mark.parametrize("data", [b"", b"\0" * 11, query("x", flags=0x8000), query("x")[:-2],
                                  query("x")[:12] + b"\xc0\x0c\0\0\1\0\1"])
def test_what_is_not_one_question_is_refused_to_parse(data):
    with pytest.raises(ValueError):
        Query(data)


def test_upstreams(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 10.0.0.2\nnameserver fe80::1\nsearch example\nnameserver 127.0.0.53\n")
    assert host_upstreams(str(conf)) == ["10.0.0.2", "127.0.0.53"]
    assert host_upstreams(str(tmp_path / "missing")) == []
    assert parse_upstream("127.0.0.1:5353") == (socket.AF_INET, ("127.0.0.1", 5353))
    assert parse_upstream("10.0.0.2") == (socket.AF_INET, ("10.0.0.2", 53))
    assert parse_upstream("2001:db8::53") == (socket.AF_INET6, ("2001:db8::53", 53, 0, 0))
    assert parse_upstream("[2001:db8::53]:5353") == (socket.AF_INET6, ("2001:db8::53", 5353, 0, 0))
    with pytest.raises(ValueError):
        parse_upstream("resolver.example")


class Served:
    """A DnsServer on loopback for network "n" (its "bridge" is lo) and "far" (a bridge that does
    not exist, so nothing can arrive on it), with a stub upstream; 127.0.0.1 is the only member."""

    def __init__(self):
        from tests.support.dns import StubDns, reserve

        self.stub = StubDns(reserve(), {"outside.test": "192.0.2.10"})
        self.stub.start()
        self.bound, ready = {}, threading.Event()

        def on_bound(bound):
            self.bound = dict(bound)
            ready.set()

        def answer(network, name, source, fallback=False):
            if source != "127.0.0.1":
                return None  # not a member: no answer at all
            if name == "web":
                return ["10.90.0.5"], True
            return [], name != "sealed.test"  # sealed.test: as asked from an internal-only container

        upstream = f"127.0.0.1:{self.stub.sock.getsockname()[1]}"
        self.dns = DnsServer(lambda: {"n": ("127.0.0.1", "lo"), "far": ("127.0.0.3", "berth-nowhere0")}, answer,
                             lambda: [upstream], on_bound=on_bound)
        self.dns.start()
        assert ready.wait(5) and set(self.bound) == {"n", "far"}

    def udp(self, name: str, network: str = "n", source: str = "127.0.0.1", timeout: float = 5.0) -> bytes | None:
        gateway, port = self.bound[network][0], self.bound[network][1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            s.settimeout(timeout)
            s.sendto(query(name), (gateway, port))
            try:
                return s.recv(4096)
            except TimeoutError:
                return None

    def tcp(self, name: str) -> bytes:
        gateway, port = self.bound["n"][0], self.bound["n"][3]
        with socket.create_connection((gateway, port), timeout=5) as s:
            s.sendall(struct.pack("!H", len(query(name))) + query(name))
            size = struct.unpack("!H", s.recv(2))[0]
            data = b""
            while len(data) < size:
                data += s.recv(size - len(data))
            return data

    def close(self):
        self.dns.stop()
        self.stub.stop()


@pytest.fixture
def served():
    s = Served()
    yield s
    s.close()


def addresses(answer: bytes) -> list[str]:
    count = struct.unpack("!H", answer[6:8])[0]
    start = len(answer) - 16 * count  # A records with a name pointer: 16 bytes each, at the end
    return [socket.inet_ntoa(answer[start + 16 * i + 12:start + 16 * i + 16]) for i in range(count)]


def rcode(answer: bytes) -> int:
    return struct.unpack("!H", answer[2:4])[0] & 0x000F


def test_the_server_answers_members_relays_the_rest_and_refuses_when_sealed(served):
    assert addresses(served.udp("web")) == ["10.90.0.5"]
    assert addresses(served.udp("outside.test")) == ["192.0.2.10"] and "outside.test" in served.stub.asked
    assert rcode(served.udp("nowhere.test")) == 3  # the upstream's NXDOMAIN, relayed
    asked = len(served.stub.asked)
    assert rcode(served.udp("sealed.test")) == RCODE_REFUSED and len(served.stub.asked) == asked


def test_tcp_answers_the_same_and_relays_over_tcp(served):
    assert addresses(served.tcp("web")) == ["10.90.0.5"]
    assert addresses(served.tcp("outside.test")) == ["192.0.2.10"] and "tcp:outside.test" in served.stub.asked


def test_no_answer_off_the_bridge_or_to_a_stranger(served):
    assert served.udp("web", source="127.0.0.2", timeout=0.5) is None  # not a container of the network
    assert served.udp("web", network="far", timeout=0.5) is None  # came in on lo, not on that network's bridge
    assert addresses(served.udp("web")) == ["10.90.0.5"]  # and the server still answers its own


def test_reverse_names():
    assert reverse_address("5.0.90.10.in-addr.arpa") == "10.90.0.5"
    assert reverse_address("5.0.90.in-addr.arpa") is None and reverse_address("x.0.90.10.in-addr.arpa") is None
    assert reverse_address("010.0.90.10.in-addr.arpa") is None and reverse_address("256.0.90.10.in-addr.arpa") is None
    q = Query(query("5.0.90.10.in-addr.arpa", qtype=12))
    assert q.reverse
    answer = q.answer_names(["web.appnet"])
    assert struct.unpack("!H", answer[6:8])[0] == 1
    assert answer.endswith(b"\x03web\x06appnet\x00")
    assert struct.unpack("!H", Query(query("5.0.90.10.in-addr.arpa")).answer_names(["web"])[6:8])[0] == 0  # type A


def test_tcp_from_a_stranger_is_closed_unanswered(served):
    gateway, port = served.bound["n"][0], served.bound["n"][3]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.2", 0))
        s.settimeout(5)
        s.connect((gateway, port))
        try:
            s.sendall(struct.pack("!H", len(query("web"))) + query("web"))
            answer = s.recv(512)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # closed at once (EOF or reset), unanswered: not a container of the network
