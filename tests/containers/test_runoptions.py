"""Run options from the Docker API and from the run form end in the same config, with Docker's errors."""

import pytest

from containers import runoptions
from runtime.errors import InvalidArgument


def test_a_docker_create_body_becomes_a_config():
    config = runoptions.from_docker({
        "Image": "busybox", "Cmd": ["sleep", "5"], "Env": ["A=b"], "Tty": True, "OpenStdin": True,
        "Labels": {"x": "y"}, "Volumes": {"/data": {}},
        "HostConfig": {"Binds": ["/srv:/srv:ro", "cache:/cache"], "Memory": 64 << 20, "NanoCpus": 500_000_000,
                       "PidsLimit": 50, "ReadonlyRootfs": True, "CapDrop": ["ALL"], "NetworkMode": "none",
                       "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}},
    }, name="/web")
    assert config["name"] == "web" and config["cmd"] == ["sleep", "5"] and config["tty"]
    assert config["mounts"] == [
        {"source": "/srv", "target": "/srv", "read_only": True, "kind": "bind"},
        {"source": "cache", "target": "/cache", "read_only": False, "kind": "volume"},
        {"source": "", "target": "/data", "read_only": False, "kind": "volume"},
    ]
    assert config["memory"] == 64 << 20 and config["nano_cpus"] == 500_000_000 and config["pids_limit"] == 50
    assert config["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert config["network_mode"] == "none" and config["read_only"] and config["cap_drop"] == ["ALL"]


def test_the_run_form_and_the_api_agree():
    form = runoptions.from_form({"image": "busybox", "name": "web", "command": "sh -c 'echo hi; sleep 1'",
                                 "env": "A=b\n\nC=d e", "volumes": "/srv:/srv:ro", "memory": "64m", "cpus": "0.5",
                                 "pids_limit": 50, "restart": "on-failure:3", "ports": "127.0.0.1:8080:80\n53:53/udp"})
    assert form["cmd"] == ["sh", "-c", "echo hi; sleep 1"]
    assert form["env"] == ["A=b", "C=d e"]
    assert form["memory"] == 64 << 20 and form["nano_cpus"] == 500_000_000
    assert form["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert form["port_bindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
                                     "53/udp": [{"HostIp": "", "HostPort": "53"}]}


def test_the_run_forms_network_fields_are_the_cli_options():
    form = runoptions.from_form({"image": "busybox", "network": "appnet", "ip": "10.90.201.7",
                                 "network_aliases": "db primary", "publish_all": True, "dns_search": "corp.example"})
    cli = runoptions.from_docker({"Image": "busybox", "HostConfig": {"NetworkMode": "appnet", "PublishAllPorts": True,
                                                                     "DnsSearch": ["corp.example"]},
                                  "NetworkingConfig": {"EndpointsConfig": {"appnet": {
                                      "Aliases": ["db", "primary"], "IPAMConfig": {"IPv4Address": "10.90.201.7"}}}}})
    for key in ("network_mode", "ipv4_address", "network_aliases", "publish_all_ports", "dns_search"):
        assert form[key] == cli[key], key
    assert form["ipv4_address"] == "10.90.201.7" and form["network_aliases"] == ["db", "primary"]
    plain = runoptions.from_form({"image": "busybox"})
    assert plain["ipv4_address"] == "" and plain["network_aliases"] == [] and not plain["publish_all_ports"]


@pytest.mark.parametrize("name", ["-bad", "a", "has space", "semi;colon"])
def test_invalid_names_are_refused_with_dockers_message(name):
    with pytest.raises(InvalidArgument, match=r"Invalid container name .* only \[a-zA-Z0-9\]"):
        runoptions.from_docker({"Image": "busybox"}, name=name)


@pytest.mark.parametrize("spec, message", [
    ("/a:/b:/c:/d", "invalid volume specification"),
    ("/a:relative", "must be absolute"),
    ("/a:/b:rx", "invalid mode"),
])
def test_invalid_volumes_are_refused(spec, message):
    with pytest.raises(InvalidArgument, match=message):
        runoptions.parse_bind(spec)


@pytest.mark.parametrize("text", ["sometimes", "always:3", "on-failure:x"])
def test_invalid_restart_policies_are_refused(text):
    with pytest.raises(InvalidArgument, match="invalid restart policy"):
        runoptions.parse_restart(text)


def test_sizes_and_env():
    assert runoptions.parse_size("1g") == 1 << 30 and runoptions.parse_size("512k") == 512 << 10
    with pytest.raises(InvalidArgument, match="invalid memory size"):
        runoptions.parse_size("lots")
    with pytest.raises(InvalidArgument, match="use KEY=value"):
        runoptions.parse_env(["NOVALUE"])


def test_rm_and_restart_conflict():
    with pytest.raises(InvalidArgument, match="conflicting options"):
        runoptions.from_docker({"Image": "busybox", "HostConfig": {"AutoRemove": True,
                                                                   "RestartPolicy": {"Name": "always"}}})


def test_an_image_is_required():
    with pytest.raises(InvalidArgument, match="No image specified"):
        runoptions.from_docker({"Cmd": ["sh"]})
