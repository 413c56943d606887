"""The retention trimmer: a terminal execution is deleted with every key and index entry naming
it once its own retention (its policy's, else its lane's, else the default) has passed; one
kept long never holds back the rest of its lane."""

from conftest import engine_time, wait_for

from ff_celery.engine import functions as fn
from ff_celery.engine.core.keys import PartitionKeys, alias_key
from ff_celery.engine.core.new_execution import ExecutionSpec
from ff_celery.engine.core.policy import KEEP_FOREVER_MS, ExecutionPolicy
from ff_celery.engine.duties.scanners import EngineScanners, ScannerSettings
from ff_celery.engine.work import signals
from ff_celery.engine.work.claimer import Claimer

HOUR_MS = 3_600_000


def complete_all(engine, lanes, count):
    worker = Claimer(engine, lanes, worker_id="w", lease_ttl_ms=30_000)
    try:
        for _ in range(count):
            worker.claim_one(timeout_s=10).complete(b"done")
    finally:
        worker.close()


def exists(engine, execution_id) -> bool:
    return engine.snapshot(execution_id) is not None


def test_expired_terminal_executions_go_with_every_key_alias_and_idempotency_key(ff_engine, ff_redis):
    signals.seed_waitpoint_secret(ff_engine, "ab" * 32)
    baseline = set(ff_redis.keys())
    worker = Claimer(ff_engine, ["default"], worker_id="w", lease_ttl_ms=30_000)
    try:
        done = ff_engine.submit("default", b"done", alias="task-1", idempotency_key="task-1:0").execution_id
        worker.claim_one(timeout_s=10).complete(b"result")
        signalled = ff_engine.submit("default", b"signalled").execution_id
        task = worker.claim_one(timeout_s=10)
        token = task.suspend("wp-1", fn.ResumeCondition(signal_names=("go",))).waitpoint.token
        signals.deliver_signal(ff_engine, signalled, "wp-1", token, "go", b'{"ok": 1}')
        worker.claim_one(timeout_s=10).complete(b"after the signal")  # a second attempt
        cutoff = ff_engine.server_time_ms()
        assert wait_for(lambda: ff_engine.server_time_ms() > cutoff)
        recent = ff_engine.submit("default", b"recent", alias="task-2").execution_id
        worker.claim_one(timeout_s=10).complete(b"kept")
        running = ff_engine.submit("default", b"running").execution_id
        held = worker.claim_one(timeout_s=10)
        scanners = EngineScanners(ff_engine, settings=ScannerSettings(retention_s=3600))
        with engine_time(ff_engine, cutoff + HOUR_MS):
            assert scanners.trim_retained() == 2
        left = {key.decode() for key in set(ff_redis.keys()) - baseline}
        for gone in (done, signalled):
            # only keys that expire by themselves may remain (signal dedup records, as FlowFabric)
            assert [key for key in left if gone.uuid in key and ff_redis.pttl(key) < 0] == []
            assert not exists(ff_engine, gone)
        assert ff_engine.resolve("task-1") is None
        assert [key for key in left if "task-1" in key] == []  # alias and idempotency key
        assert ff_engine.resolve("task-2") == recent
        assert ff_engine.snapshot(recent).public_state == "completed"
        assert ff_engine.snapshot(running).public_state == "active"
        index = PartitionKeys(ff_engine.partitions.lane_partition("default"))
        assert {m.decode() for m in ff_redis.zrange(index.terminal("default"), 0, -1)} == {recent}
        assert {m.decode() for m in ff_redis.smembers(index.all_executions)} == {recent, running}
        held.complete()
    finally:
        worker.close()


def test_each_execution_keeps_its_own_retention_then_its_lanes_then_the_default(ff_engine):
    def submit(lane, retention_ms=None):
        policy = ExecutionPolicy() if retention_ms is None else ExecutionPolicy().with_retention(retention_ms)
        return ff_engine.submit(lane, b"x", policy=policy).execution_id

    forever_first = [submit("short", KEEP_FOREVER_MS) for _ in range(3)]  # at the head of the lane
    long_kept = submit("short", 2 * HOUR_MS)
    short_lane = [submit("short") for _ in range(4)]
    default_lane = submit("default")
    brief = submit("default", 10_000)
    complete_all(ff_engine, ["short", "default"], 10)
    completed = ff_engine.server_time_ms()
    settings = ScannerSettings(retention_s=HOUR_MS / 1000, lane_retention_s={"short": 60}, batch_size=2)
    scanners = EngineScanners(ff_engine, settings=settings)

    def trim_until_idle(now_ms):
        with engine_time(ff_engine, now_ms):
            scanners.trim_retained()
            while scanners.trimmer.behind:  # ran out of time on a loaded machine: goes on
                scanners.trim_retained()

    trim_until_idle(completed + 11_000)
    assert not exists(ff_engine, brief)
    assert all(exists(ff_engine, eid) for eid in [*short_lane, default_lane, long_kept])
    trim_until_idle(completed + 61_000)  # a batch of 2, behind 4 kept ones: none holds the rest back
    assert not any(exists(ff_engine, eid) for eid in short_lane)
    assert all(exists(ff_engine, eid) for eid in [default_lane, long_kept, *forever_first])
    trim_until_idle(completed + 2 * HOUR_MS + 1000)
    assert not any(exists(ff_engine, eid) for eid in (default_lane, long_kept))
    assert all(exists(ff_engine, eid) for eid in forever_first)


def test_a_replaced_tasks_alias_stays_with_its_successor(ff_engine, ff_redis):
    first = ff_engine.submit("default", b"first", alias="task-r", idempotency_key="task-r:0").execution_id
    complete_all(ff_engine, ["default"], 1)
    successor = ff_engine.submit(
        "default", b"second", alias="task-r", alias_replaces=True, idempotency_key="task-r:1"
    ).execution_id
    scanners = EngineScanners(ff_engine, settings=ScannerSettings(retention_s=1))
    with engine_time(ff_engine, ff_engine.server_time_ms() + 5000):
        assert scanners.trim_retained() == 1
    assert not exists(ff_engine, first)
    assert ff_engine.resolve("task-r") == successor
    assert ff_redis.exists(alias_key(ff_engine.namespace, "task-r"))


def test_a_flow_goes_with_its_last_member_and_each_member_takes_its_edges(ff_engine, ff_redis):
    from dataclasses import replace

    from ff_celery.engine.core.flows import FlowRef
    from ff_celery.engine.core.ids import ExecutionId

    baseline = set(ff_redis.keys())
    partition = ff_engine.partitions.lane_partition("default")
    flow = FlowRef(ff_engine.partitions.new_flow_id(partition), partition)
    members = [
        ff_engine.new_execution(ExecutionSpec("default", b"step"), ExecutionId.mint(partition)) for _ in range(2)
    ]
    members[1] = replace(members[1], upstream=(members[0].request.execution_id,))
    first, second = (created.execution_id for created in ff_engine.submit_flow(flow, members))
    scanners = EngineScanners(ff_engine, settings=ScannerSettings(retention_s=3600))
    complete_all(ff_engine, ["default"], 1)
    ff_engine.flows.cascade(first, flow.flow_id)
    complete_all(ff_engine, ["default"], 1)
    scanners.flows.project_flows()
    cutoff = ff_engine.server_time_ms()
    with engine_time(ff_engine, cutoff + HOUR_MS):
        assert scanners.trim_retained() == 2
    left = {key.decode() for key in set(ff_redis.keys()) - baseline}
    assert [key for key in left if flow.flow_id in key or first.uuid in key or second.uuid in key] == []
    index = PartitionKeys(partition)
    assert not ff_redis.sismember(index.flow_index, flow.flow_id)


def test_one_trim_deletes_every_expired_execution_of_a_lane_page_after_page(ff_engine):
    count = 130  # more than two pages of the default batch (50), all on the lane's one partition
    ended = [ff_engine.submit("busy", b"x").execution_id for _ in range(count)]
    complete_all(ff_engine, ["busy"], count)
    scanners = EngineScanners(ff_engine, settings=ScannerSettings(retention_s=1))  # default batch size
    deleted = 0
    with engine_time(ff_engine, ff_engine.server_time_ms() + HOUR_MS):
        deleted += scanners.trim_retained()
        while scanners.trimmer.behind:  # out of time on a loaded machine: the next run goes on
            deleted += scanners.trim_retained()
    assert deleted == count
    assert not any(exists(ff_engine, eid) for eid in ended)


def test_an_upstream_result_stays_until_every_member_waiting_for_it_has_run(ff_engine):
    from dataclasses import replace

    from ff_celery.engine.core.flows import FlowRef
    from ff_celery.engine.core.ids import ExecutionId

    partition = ff_engine.partitions.lane_partition("default")
    flow = FlowRef(ff_engine.partitions.new_flow_id(partition), partition)
    brief = ExecutionPolicy().with_retention(0)
    members = [ff_engine.new_execution(ExecutionSpec("default", b"step", policy=brief), ExecutionId.mint(partition))]
    for _ in range(2):  # a chord body and a chain step waiting for it, each with their own lanes
        members.append(
            ff_engine.new_execution(ExecutionSpec("later", b"step", policy=brief), ExecutionId.mint(partition))
        )
    members[1] = replace(members[1], upstream=(members[0].request.execution_id,))
    members[2] = replace(members[2], upstream=(members[0].request.execution_id,))
    upstream, first, second = (created.execution_id for created in ff_engine.submit_flow(flow, members))
    scanners = EngineScanners(ff_engine, settings=ScannerSettings(retention_s=0))
    complete_all(ff_engine, ["default"], 1)
    ff_engine.flows.cascade(upstream, flow.flow_id)

    def trim_hours_later(hours):
        with engine_time(ff_engine, ff_engine.server_time_ms() + hours * HOUR_MS):
            scanners.trim_retained()
            while scanners.trimmer.behind:
                scanners.trim_retained()

    trim_hours_later(1)  # both still to run: the upstream's result is kept
    assert ff_engine.snapshot(upstream).public_state == "completed"
    complete_all(ff_engine, ["later"], 1)
    trim_hours_later(2)  # one of them still to run
    assert ff_engine.snapshot(upstream).public_state == "completed"
    complete_all(ff_engine, ["later"], 1)
    trim_hours_later(3)  # a retention after the last ran: it is looked at again
    assert not any(exists(ff_engine, eid) for eid in (upstream, first, second))


def test_aliases_idempotency_records_and_next_attempt_payloads_last_as_long_as_their_execution(ff_engine, ff_redis):
    from dataclasses import replace

    from ff_celery.engine.core.flows import FlowRef
    from ff_celery.engine.core.ids import ExecutionId
    from ff_celery.engine.core.keys import next_attempt_payload_key

    solo = ff_engine.submit("default", b"x", alias="solo", idempotency_key="solo:0").execution_id
    partition = ff_engine.partitions.lane_partition("default")
    flow = FlowRef(ff_engine.partitions.new_flow_id(partition), partition)
    member = ff_engine.new_execution(
        ExecutionSpec("default", b"y", alias="member", idempotency_key="member:0"), ExecutionId.mint(partition)
    )
    (flowed,) = (created.execution_id for created in ff_engine.submit_flow(flow, [replace(member)]))
    ff_engine.set_next_attempt_payload(solo, b"retried with new arguments")
    index = PartitionKeys(partition)
    names = [
        alias_key(ff_engine.namespace, "solo"),
        alias_key(ff_engine.namespace, "member"),
        index.idempotency(ff_engine.namespace, "solo:0"),
        index.idempotency(ff_engine.namespace, "member:0"),
        next_attempt_payload_key(solo),
    ]
    assert [ff_redis.pttl(key) for key in names] == [-1] * len(names)  # no expiry of their own
    complete_all(ff_engine, ["default"], 2)
    scanners = EngineScanners(ff_engine, settings=ScannerSettings(retention_s=1))
    with engine_time(ff_engine, ff_engine.server_time_ms() + HOUR_MS):
        assert scanners.trim_retained() == 2
    assert not any(exists(ff_engine, eid) for eid in (solo, flowed))
    assert [ff_redis.exists(key) for key in names] == [0] * len(names)  # gone with them


def test_a_replay_between_the_trimmers_read_and_its_delete_makes_the_delete_a_no_op(ff_engine, monkeypatch):
    from ff_celery.engine.core.executor import Batch
    from ff_celery.engine.core.keys import ExecKeys

    replayed = ff_engine.submit("default", b"payload").execution_id
    complete_all(ff_engine, ["default"], 1)
    operator = ff_engine.fork()  # another client, replaying at the worst moment
    queue_on, replays = Batch.queue_on, []

    def replay_before_deleting(batch, pipe):
        """Queue the batch, after replaying the execution if the batch deletes it (once)."""
        if ("delete", (ExecKeys(replayed).core, {}), None) in batch._queued and not replays:
            operator.replay(replayed)
            replays.append(replayed)
        queue_on(batch, pipe)

    monkeypatch.setattr(Batch, "queue_on", replay_before_deleting)
    scanners = EngineScanners(ff_engine, settings=ScannerSettings(retention_s=1))
    with engine_time(ff_engine, ff_engine.server_time_ms() + HOUR_MS):
        scanners.trim_retained()
    assert replays == [replayed]
    monkeypatch.undo()
    assert ff_engine.snapshot(replayed).public_state == "waiting"
    worker = Claimer(ff_engine, ["default"], worker_id="w", lease_ttl_ms=30_000)
    try:
        task = worker.claim_one(timeout_s=10)
        assert task.execution_id == replayed and task.payload == b"payload"
        task.complete(b"again")
    finally:
        worker.close()
        operator.close()
    with engine_time(ff_engine, ff_engine.server_time_ms() + HOUR_MS):
        assert scanners.trim_retained() == 1
    assert not exists(ff_engine, replayed)


def test_the_scanners_on_their_default_settings_trim_a_backlog_of_many_pages_at_once(ff_engine):
    ended = [
        ff_engine.submit("busy", b"x", policy=ExecutionPolicy().with_retention(0)).execution_id for _ in range(130)
    ]
    complete_all(ff_engine, ["busy"], len(ended))
    scanners = EngineScanners(ff_engine.fork()).start()  # FlowFabric's 60 s interval would take minutes
    try:
        assert wait_for(lambda: not any(exists(ff_engine, eid) for eid in ended), timeout=60, interval=0.5)
    finally:
        scanners.stop()
