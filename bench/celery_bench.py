"""Celery on flowfabric:// vs redis:// vs amqp:// (RabbitMQ), one harness, one run.

For each broker: a ``celery worker -P prefork -c 2`` subprocess with the same "safe"
settings (acks_late, prefetch multiplier 1: what ``ff_celery.install`` sets), and for the
peers also with Celery's defaults (early acks, prefetch multiplier 4); results in the
FlowFabric backend for flowfabric:// and in a Redis backend for the others. Measures
publish rate (no worker running), end-to-end no-op throughput (publish N with the worker
running, until the last result), publish->start latency at a paced rate, the
``delay().get()`` round trip, and the CPU time per task of the publisher, the worker (all
its processes) and the servers during the end-to-end run (/proc). Every configuration runs
once per round, in turn, for ``--rounds`` rounds; the medians are reported.

    python bench/celery_bench.py [--count 3000] [--rounds 3] [--amqp amqp://guest:guest@127.0.0.1:5672//]
    python bench/celery_bench.py --cluster [--rounds 3]
    python bench/celery_bench.py --metrics [--rounds 3]

``--cluster`` measures flowfabric:// on one node and on a local cluster of 3 primaries with a
replica each (``DevCluster``), with the queue on one lane and spread over 3 (``queue_shards``),
and prints each node's CPU per task.

``--metrics`` measures only flowfabric://, without and with the worker exporting Prometheus
metrics (``flowfabric_metrics_port``, prefork in multiprocess mode, scraped every second),
alternating for ``--rounds`` rounds, and reports the medians and the overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kombu
import redis

from ff_celery.devtools.devserver import DevCluster, DevServer, free_port
from ff_celery.engine.core.library import FLOWFABRIC_VERSION, relabelled_library

HERE = Path(__file__).resolve().parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants, from /proc."""
    ticks, total, pids = os.sysconf("SC_CLK_TCK"), 0.0, [pid]
    while pids:
        current = pids.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:  # exited meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        pids += map(int, children)
    return total


def command_usec(ports: list[int]) -> dict[str, float]:
    """Microseconds the Valkeys at ``ports`` spent in each command so far (INFO commandstats)."""
    spent: dict[str, float] = {}
    for port in ports:
        with redis.Redis(port=port) as client:
            for name, fields in client.info("commandstats").items():
                command = name.removeprefix("cmdstat_")
                spent[command] = spent.get(command, 0.0) + float(fields["usec"])
    return spent


#: Celery's worker-to-worker chatter, off unless asked for.
WITHOUT_CHATTER = ("--without-gossip", "--without-mingle", "--without-heartbeat")


def start_worker(env: dict[str, str], *options: str, chatter: bool = False) -> subprocess.Popen[bytes]:
    """``celery -A bench_app worker -P prefork -c 2`` (plus ``options``; with gossip, mingle
    and heartbeats if ``chatter``), its output discarded."""
    quiet = () if chatter else WITHOUT_CHATTER
    command = [sys.executable, "-m", "celery", "-A", "bench_app", "worker", "-P", "prefork", "-c", "2",
               "-l", "warning", *quiet, *options]  # fmt: skip
    return subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(
    label: str,
    broker: str,
    backend: str,
    count: int,
    server_pids: list[int],
    valkey_ports: list[int],
    worker_env: dict[str, str] | None = None,
    settings: str = "safe",
    nodes: dict[str, int] | None = None,
    queue_shards: int = 1,
) -> dict[str, float]:
    """One row: publish rate, end-to-end rate, latencies, CPU per task of the publisher, the
    worker (main and pool processes) and the servers (``server_pids``: broker, backend), and
    the Valkeys' own command time per task (``INFO commandstats``: all commands, FCALLs).
    With ``nodes`` (name -> pid: a cluster's), each node's CPU per task is printed too;
    ``queue_shards`` spreads the queue over that many lanes (publisher and worker)."""
    os.environ.update(BENCH_BROKER=broker, BENCH_BACKEND=backend, BENCH_SETTINGS=settings,
                      BENCH_QUEUE_SHARDS=str(queue_shards))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(HERE), **(worker_env or {})}
    sys.path.insert(0, str(HERE))
    for name in [m for m in sys.modules if m == "bench_app"]:
        del sys.modules[name]
    import bench_app

    app = bench_app.app
    app.control.purge()  # declares the queue first (a fresh RabbitMQ has none)

    # publish rate: nothing consumes yet
    started = time.perf_counter()
    published = [bench_app.noop.delay() for _ in range(count)]
    publish_rate = count / (time.perf_counter() - started)
    worker = start_worker(env)
    try:
        published[-1].get(timeout=300)  # the queue drains once the worker is up
        for result in published:
            result.get(timeout=300)

        # end-to-end throughput with the worker running, and the CPU each process spent on it
        processes = {  # the publisher alone (its descendants include the worker and the server)
            "publisher": time.process_time,
            "worker": lambda: cpu_seconds(worker.pid),
            "server": lambda: sum(map(cpu_seconds, server_pids)),
            **{node: (lambda pid=pid: cpu_seconds(pid)) for node, pid in (nodes or {}).items()},
        }
        cpu_before = {name: spent() for name, spent in processes.items()}
        commands_before = command_usec(valkey_ports)
        started = time.perf_counter()
        results = [bench_app.noop.delay() for _ in range(count)]
        for result in results:
            result.get(timeout=300)
        throughput = count / (time.perf_counter() - started)
        cpu_ms = {name: (spent() - cpu_before[name]) * 1000 / count for name, spent in processes.items()}
        commands = command_usec(valkey_ports)
        command_us = sum(commands.values()) - sum(commands_before.values())
        fcall_us = commands.get("fcall", 0) - commands_before.get("fcall", 0)

        # publish -> start latency at a paced 50 tasks/s
        paced = []
        for _ in range(200):
            paced.append(bench_app.started_after.delay(time.time()))
            time.sleep(0.02)
        latencies = [r.get(timeout=60) * 1000 for r in paced]

        # .get() round trip, one at a time
        round_trips = []
        for _ in range(200):
            t = time.perf_counter()
            bench_app.noop.delay().get(timeout=30)
            round_trips.append((time.perf_counter() - t) * 1000)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        app.close()
    row = {
        "publish/s": publish_rate,
        "e2e/s": throughput,
        "start p50 ms": percentile(latencies, 0.5),
        "start p95 ms": percentile(latencies, 0.95),
        "get p50 ms": statistics.median(round_trips),
        "get p95 ms": percentile(round_trips, 0.95),
        **{f"cpu ms {name[:3]}": cpu_ms[name] for name in ("publisher", "worker", "server")},
        "valkey us": command_us / count,
        "fcall us": fcall_us / count,
    }
    print(f"{label:<18}" + "".join(f"{value:>12.2f}" for value in row.values()), flush=True)
    if nodes:
        print("  CPU ms per task by node: " + ", ".join(f"{node} {cpu_ms[node]:.2f}" for node in nodes), flush=True)
    return row


COLUMNS = ("publish/s", "e2e/s", "start p50ms", "start p95ms", "get p50 ms", "get p95 ms",
           "cpu ms pub", "cpu ms wor", "cpu ms ser", "valkey us", "fcall us")  # fmt: skip


def rabbitmq_pids() -> list[int]:
    """The local RabbitMQ's Erlang VM processes (for their CPU time)."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "beam.smp":
                pids.append(int(comm.parent.name))
    return pids


def rabbitmq_reachable(url: str) -> bool:
    try:
        with kombu.Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


@contextlib.contextmanager
def scraped_metrics() -> Iterator[dict[str, str]]:
    """Worker settings that export metrics (multiprocess mode), scraped every second meanwhile."""
    port, stop = free_port(), threading.Event()

    def scrape() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()

    with tempfile.TemporaryDirectory(prefix="ff-bench-metrics-") as directory:
        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
        try:
            yield {"BENCH_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": directory}
        finally:
            stop.set()
            scraper.join()


def metrics_overhead(server: DevServer, count: int, rounds: int) -> None:
    url = f"flowfabric://127.0.0.1:{server.port}/0"
    plain: list[dict[str, float]] = []
    metered: list[dict[str, float]] = []
    for _ in range(rounds):
        plain.append(measure("flowfabric://", url, url, count, [server.pid], [server.port]))
        with scraped_metrics() as worker_env:
            metered.append(measure("  + metrics", url, url, count, [server.pid], [server.port], worker_env))
    print()
    for name in plain[0]:
        without, with_metrics = (statistics.median(row[name] for row in rows) for rows in (plain, metered))
        print(f"median {name:<12}{without:>10.2f}{with_metrics:>10.2f}   {100 * (with_metrics / without - 1):+.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--metrics", action="store_true", help="flowfabric:// without and with metrics only")
    parser.add_argument("--cluster", action="store_true", help="flowfabric:// on one node and on a 3+3 cluster")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each configuration once per round)")
    args = parser.parse_args()
    with DevServer() as server:
        port = server.port
        print(f"{args.count} tasks per measurement; {server.version} on {port}; prefork -c 2\n")
        print(f"{'broker':<18}" + "".join(f"{h:>12}" for h in COLUMNS))
        if args.metrics:
            metrics_overhead(server, args.count, args.rounds)
        elif args.cluster:
            cluster_comparison(server, args.count, args.rounds)
        else:
            comparison(server, args.count, args.rounds, args.amqp)


def contract_only_server() -> DevServer:
    """A server whose library answers FlowFabric's version (ours, relabelled), as where
    FlowFabric's own server manages Valkey: ff_celery sends the contract calls one by one
    there, without its hot-path library."""
    server = DevServer().start()
    client = redis.Redis(port=server.port)
    client.function_load(relabelled_library(FLOWFABRIC_VERSION))
    client.close()
    return server


def comparison(server: DevServer, count: int, rounds: int, amqp: str) -> None:
    """Every broker and setting once per round, in turn; then the medians. flowfabric:// runs
    twice: with the hot-path library, and with the contract calls alone (another server)."""
    port, ours = server.port, [server.pid]
    flowfabric = f"flowfabric://127.0.0.1:{port}/0"
    plain = contract_only_server()
    try:
        contract = f"flowfabric://127.0.0.1:{plain.port}/0"
        configurations = [
            Configuration("flowfabric://", flowfabric, flowfabric, ours, [port]),
            Configuration("  contract calls", contract, contract, [plain.pid], [plain.port]),
        ]
        peers(configurations, port, ours, amqp)
        run_rounds(configurations, count, rounds)
    finally:
        plain.stop()


def peers(configurations: list[Configuration], port: int, ours: list[int], amqp: str) -> None:
    """Add the peers: kombu's Redis transport and RabbitMQ, with safe and default settings."""
    for settings in ("safe", "defaults"):
        configurations.append(Configuration(f"redis:// {settings}", f"redis://127.0.0.1:{port}/1",
                                            f"redis://127.0.0.1:{port}/2", ours, [port], settings))  # fmt: skip
    if rabbitmq_reachable(amqp):  # server CPU: RabbitMQ's and the result backend's
        for settings in ("safe", "defaults"):
            configurations.append(Configuration(f"amqp:// {settings}", amqp, f"redis://127.0.0.1:{port}/3",
                                                ours + rabbitmq_pids(), [port], settings))  # fmt: skip
    else:
        print(f"amqp://        not measured: RabbitMQ not reachable at {amqp}")


def cluster_comparison(server: DevServer, count: int, rounds: int) -> None:
    """flowfabric:// on one node and on a local cluster of 3 primaries with a replica each."""
    with DevCluster(primaries=3, replicas=1) as cluster:
        one, many = (f"flowfabric://127.0.0.1:{node.port}/0" for node in (server, cluster.primaries[0]))
        roles = [("primary", cluster.primaries), ("replica", cluster.replicas)]
        nodes = {f"{role} {n}": node.pid for role, group in roles for n, node in enumerate(group, 1) if node.pid}
        primary_ports = [node.port for node in cluster.primaries]
        single = Configuration("1 node", one, one, [server.pid], [server.port])
        clustered = Configuration("3+3 cluster", many, many, list(nodes.values()), primary_ports, nodes=nodes)
        spread = Configuration(
            "  3 lanes", many, many, list(nodes.values()), primary_ports, nodes=nodes, queue_shards=3
        )
        run_rounds([single, clustered, spread], count, rounds)


@dataclass
class Configuration:
    """One row of the comparison: a broker and backend, the server processes that serve
    them (for their CPU) and the Valkey ports to read command time from."""

    label: str
    broker: str
    backend: str
    server_pids: list[int]
    valkey_ports: list[int]
    settings: str = "safe"
    nodes: dict[str, int] | None = None
    queue_shards: int = 1


def run_rounds(configurations: list[Configuration], count: int, rounds: int) -> None:
    """Every configuration once per round, in turn; then the medians."""
    rows: dict[str, list[dict[str, float]]] = {c.label: [] for c in configurations}
    for _ in range(rounds):
        for c in configurations:
            row = measure(c.label, c.broker, c.backend, count, c.server_pids, c.valkey_ports, settings=c.settings,
                          nodes=c.nodes, queue_shards=c.queue_shards)  # fmt: skip
            rows[c.label].append(row)
    print(f"\nmedians of {rounds} rounds")
    print(f"{'broker':<18}" + "".join(f"{h:>12}" for h in COLUMNS))
    for label, measured in rows.items():
        medians = [statistics.median(row[name] for row in measured) for name in measured[0]]
        print(f"{label:<18}" + "".join(f"{value:>12.2f}" for value in medians))


if __name__ == "__main__":
    main()
