"""The embedded DNS's messages (runtime/network/dns.py): what it reads of a query, what it answers."""

import socket
import struct

import pytest

from runtime.network.dns import RCODE_REFUSED, Query, host_upstreams, parse_upstream


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
    assert parse_upstream("127.0.0.1:5353") == ("127.0.0.1", 5353) and parse_upstream("10.0.0.2") == ("10.0.0.2", 53)
