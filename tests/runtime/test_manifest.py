"""Tests of runtime/manifest.py: parsing, validation and platform choice (no network)."""

import json

import pytest

from runtime import manifest as m
from runtime.errors import InvalidArgument, NotFound

CONFIG_DIGEST = "sha256:" + "a" * 64
LAYER_DIGEST = "sha256:" + "b" * 64


def _image_doc(media_type=m.MEDIA_TYPE_DOCKER_MANIFEST, **extra):
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": m.MEDIA_TYPE_DOCKER_CONFIG, "digest": CONFIG_DIGEST, "size": 100},
        "layers": [{"mediaType": m.MEDIA_TYPE_DOCKER_LAYER_GZIP, "digest": LAYER_DIGEST, "size": 2000}],
    }
    doc.update(extra)
    return doc


def _entry(arch, variant=None, os="linux", digest_char="c", media_type=m.MEDIA_TYPE_OCI_MANIFEST):
    platform = {"os": os, "architecture": arch}
    if variant:
        platform["variant"] = variant
    return {"mediaType": media_type, "digest": "sha256:" + digest_char * 64, "size": 500, "platform": platform}


def _index(*entries):
    return m.Index(manifests=tuple(m._parse_descriptor(e, "e") for e in entries))


#
# parse_manifest
#


def test_it_parses_a_docker_manifest():
    parsed = m.parse_manifest(json.dumps(_image_doc()).encode(), m.MEDIA_TYPE_DOCKER_MANIFEST)
    assert isinstance(parsed, m.Manifest)
    assert parsed.media_type == m.MEDIA_TYPE_DOCKER_MANIFEST
    assert parsed.config.digest == CONFIG_DIGEST and parsed.config.size == 100
    assert [layer.digest for layer in parsed.layers] == [LAYER_DIGEST]
    assert parsed.layers[0].compression == "gzip"

def test_it_takes_the_media_type_from_the_body_when_served_as_json():
    doc = _image_doc(m.MEDIA_TYPE_OCI_MANIFEST)
    parsed = m.parse_manifest(json.dumps(doc).encode(), "application/json; charset=utf-8")
    assert parsed.media_type == m.MEDIA_TYPE_OCI_MANIFEST

def test_it_guesses_an_oci_manifest_without_media_type():
    doc = _image_doc()
    del doc["mediaType"]
    assert m.parse_manifest(json.dumps(doc).encode()).media_type == m.MEDIA_TYPE_OCI_MANIFEST

def test_it_parses_an_index_with_platforms():
    doc = {"schemaVersion": 2, "mediaType": m.MEDIA_TYPE_OCI_INDEX,
           "manifests": [_entry("amd64"), _entry("arm64", "v8", digest_char="d")]}
    parsed = m.parse_manifest(json.dumps(doc).encode(), m.MEDIA_TYPE_OCI_INDEX)
    assert isinstance(parsed, m.Index)
    assert [str(e.platform) for e in parsed.manifests] == ["linux/amd64", "linux/arm64/v8"]

def test_it_round_trips_through_to_json():
    parsed = m.parse_manifest(json.dumps(_image_doc()).encode())
    assert m.parse_manifest(parsed.to_json()) == parsed

def test_it_refuses_an_oversized_manifest():
    with pytest.raises(InvalidArgument, match="over the limit"):
        m.parse_manifest(b" " * (m.MAX_MANIFEST_SIZE + 1))

@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["config"].update(digest="sha256:xyz"), "config.digest"),
    (lambda d: d["config"].update(digest="md5:" + "a" * 32), "config.digest"),
    (lambda d: d["layers"][0].update(size=-1), r"layers\[0\].size"),
    (lambda d: d["layers"][0].update(size=True), r"layers\[0\].size"),
    (lambda d: d["layers"][0].update(mediaType="text/html"), r"layers\[0\] has unsupported media type"),
    (lambda d: d.update(layers="nope"), "layers is missing or not a list"),
    (lambda d: d.pop("config"), "config is missing"),
    (lambda d: d.update(schemaVersion=3), "schemaVersion"),
    (lambda d: d["layers"][0].update(urls=["file:///etc/passwd"]), "non-http URL"),
    (lambda d: d.update(annotations={"a": 1}), "annotations"),
])
def test_it_says_what_is_wrong(mutate, message):
    doc = _image_doc()
    mutate(doc)
    with pytest.raises(InvalidArgument, match=message):
        m.parse_manifest(json.dumps(doc).encode())

def test_it_refuses_a_media_type_disagreement():
    with pytest.raises(InvalidArgument, match="served as"):
        m.parse_manifest(json.dumps(_image_doc()).encode(), m.MEDIA_TYPE_OCI_MANIFEST)

def test_it_refuses_schema1():
    with pytest.raises(InvalidArgument, match="schema 1"):
        m.parse_manifest(b'{"schemaVersion": 1, "fsLayers": []}')

def test_it_refuses_non_json():
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        m.parse_manifest(b"\xff<html>")
    with pytest.raises(InvalidArgument, match="not a JSON object"):
        m.parse_manifest(b"[]")

def test_it_bounds_the_number_of_layers():
    doc = _image_doc()
    doc["layers"] = doc["layers"] * (m.MAX_DESCRIPTORS + 1)
    with pytest.raises(InvalidArgument, match="layers, over the limit"):
        m.parse_manifest(json.dumps(doc).encode())


#
# select_platform
#


def test_it_picks_the_requested_architecture():
    index = _index(_entry("amd64", digest_char="1"), _entry("arm64", "v8", digest_char="2"))
    assert m.select_platform(index, arch="arm64").digest == "sha256:" + "2" * 64
    assert m.select_platform(index, arch="arm64", variant="v8").digest == "sha256:" + "2" * 64
    assert m.select_platform(index, arch="amd64").digest == "sha256:" + "1" * 64

def test_it_defaults_to_the_host(monkeypatch):
    monkeypatch.setattr(m._platform, "machine", lambda: "aarch64")
    index = _index(_entry("amd64", digest_char="1"), _entry("arm64", digest_char="2"))
    assert m.select_platform(index).digest == "sha256:" + "2" * 64
    monkeypatch.setattr(m._platform, "machine", lambda: "x86_64")
    assert m.select_platform(index).digest == "sha256:" + "1" * 64

def test_it_matches_arm_variants():
    index = _index(_entry("arm", "v6", digest_char="6"), _entry("arm", "v7", digest_char="7"))
    assert m.select_platform(index, arch="arm", variant="v7").digest == "sha256:" + "7" * 64
    # No variant asked: the first arm entry.
    assert m.select_platform(index, arch="arm").digest == "sha256:" + "6" * 64

def test_it_skips_attestations_and_other_oses():
    index = _index(_entry("unknown", os="unknown", digest_char="0"),
                   _entry("amd64", os="windows", digest_char="9"),
                   _entry("amd64", digest_char="1"))
    assert m.select_platform(index, arch="amd64").digest == "sha256:" + "1" * 64

def test_it_lists_what_is_available_when_nothing_matches():
    index = _index(_entry("amd64"), _entry("s390x", digest_char="e"))
    with pytest.raises(NotFound, match=r"linux/arm64 .*available: linux/amd64, linux/s390x"):
        m.select_platform(index, arch="arm64")
