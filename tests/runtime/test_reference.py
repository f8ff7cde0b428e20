"""Tests for runtime.reference: Docker's normalisation of image references."""

import pytest

from runtime.errors import InvalidArgument
from runtime.reference import Reference, is_image_id_prefix, parse_reference

HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
DIGEST = f"sha256:{HEX}"


@pytest.mark.parametrize(
    "text, registry, repository, tag, digest, familiar, full",
    [
        ("busybox", "docker.io", "library/busybox", "latest", None,
         "busybox:latest", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None,
         "busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io", "library/busybox", "latest", None,
         "busybox:latest", "docker.io/library/busybox:latest"),
        ("docker.io/library/busybox:latest", "docker.io", "library/busybox", "latest", None,
         "busybox:latest", "docker.io/library/busybox:latest"),
        ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None,
         "busybox:latest", "docker.io/library/busybox:latest"),
        ("team/app:v2", "docker.io", "team/app", "v2", None,
         "team/app:v2", "docker.io/team/app:v2"),
        ("docker.io/library/a/b", "docker.io", "library/a/b", "latest", None,
         "library/a/b:latest", "docker.io/library/a/b:latest"),
        ("127.0.0.1:5000/team/app:v2", "127.0.0.1:5000", "team/app", "v2", None,
         "127.0.0.1:5000/team/app:v2", "127.0.0.1:5000/team/app:v2"),
        ("localhost/app", "localhost", "app", "latest", None,
         "localhost/app:latest", "localhost/app:latest"),
        ("localhost:5000/app", "localhost:5000", "app", "latest", None,
         "localhost:5000/app:latest", "localhost:5000/app:latest"),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None,
         "[::1]:5000/app:latest", "[::1]:5000/app:latest"),
        (f"busybox@{DIGEST}", "docker.io", "library/busybox", None, DIGEST,
         f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1.36@{DIGEST}", "docker.io", "library/busybox", "1.36", DIGEST,
         f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox:1.36@{DIGEST}"),
        ("my-reg.example.com/a__b/c-d.e:V_1.0-x", "my-reg.example.com", "a__b/c-d.e", "V_1.0-x", None,
         "my-reg.example.com/a__b/c-d.e:V_1.0-x", "my-reg.example.com/a__b/c-d.e:V_1.0-x"),
    ],
)
def test_it_normalises_like_docker(text, registry, repository, tag, digest, familiar, full):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.familiar == familiar
    assert ref.full == full
    assert str(ref) == full
    # Parsing the full or familiar form again gives the same reference.
    assert parse_reference(ref.full) == ref
    assert parse_reference(ref.familiar) == ref


def test_familiar_name_strips_default_registry_and_library():
    assert parse_reference("busybox:1").familiar_name == "busybox"
    assert parse_reference("team/app").familiar_name == "team/app"
    assert parse_reference("quay.io/library/x").familiar_name == "quay.io/library/x"
    assert parse_reference("busybox").name == "docker.io/library/busybox"


def test_with_tag_replaces_tag_and_drops_digest():
    ref = parse_reference(f"busybox@{DIGEST}").with_tag("v1")
    assert ref == Reference("docker.io", "library/busybox", "v1", None)
    assert ref.familiar == "busybox:v1"
    with pytest.raises(InvalidArgument, match="invalid tag"):
        ref.with_tag("-bad")


def test_references_are_hashable_and_frozen():
    ref = parse_reference("busybox")
    assert {ref: 1}[parse_reference("docker.io/library/busybox:latest")] == 1
    with pytest.raises(AttributeError):
        ref.tag = "x"


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("team/App", "must be lowercase"),
        ("busybox:", "empty tag"),
        ("busybox:bad!tag", "invalid tag"),
        ("busybox:bad/tag:x", "invalid registry"),
        ("busybox:-x", "invalid tag"),
        ("busybox:a+b", "invalid tag"),
        ("busybox:" + "a" * 129, "tag longer than 128"),
        ("busybox@sha256:abc", "invalid digest"),
        ("busybox@md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported algorithm"),
        ("busybox@", "invalid digest"),
        (HEX, "64-character hexadecimal"),
        ("a//b", "invalid repository name"),
        ("-a/b", "invalid repository name"),
        ("a_/b", "invalid repository name"),
        ("reg.io/", "invalid repository name"),
        (":tag", "empty repository name"),
        ("bad_host.io/app", "invalid registry"),
        (" busybox", "whitespace"),
        ("x/" + "a" * 260, "longer than 255"),
    ],
)
def test_it_rejects_invalid_references_saying_why(text, why):
    with pytest.raises(InvalidArgument) as exc:
        parse_reference(text)
    assert why in str(exc.value)
    assert str(exc.value).startswith("invalid reference")


def test_tag_of_exactly_128_characters_is_accepted():
    assert parse_reference("busybox:" + "a" * 128).tag == "a" * 128


@pytest.mark.parametrize(
    "text, expected",
    [
        ("abcd", True),
        ("abc", False),
        (HEX, True),
        (DIGEST, True),
        ("sha256:abcd", True),
        (HEX + "0", False),
        ("ABCD", False),
        ("busybox", False),
        ("sha512:abcd", False),
        ("", False),
    ],
)
def test_is_image_id_prefix(text, expected):
    assert is_image_id_prefix(text) is expected
