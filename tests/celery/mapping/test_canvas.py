"""Canvases as flows, the parts that need no server: which canvases become flows, the flow
step a member's message carries (and refusing a malformed one), and when a waiting member's
own countdown or eta lets it start."""

from __future__ import annotations

import pytest
from celery import Celery, chain, chord, group

from ff_celery.mapping.canvas import expressible, first_task
from ff_celery.mapping.messages import FLOW_HEADER, FlowStep, PublishError, submission_for

FLOW_ID = "5d3c1a2b-7e8f-4a9b-8c0d-1e2f3a4b5c6d"

app = Celery("canvas-test", broker="memory://")


@app.task
def add(x, y=0):
    return x + y


@app.task
def total(values):
    return sum(values)


@pytest.mark.parametrize(
    "canvas",
    [
        chain(add.s(1, 1), add.s(2)),
        group(add.s(1), add.s(2)),
        chord([add.s(1), add.s(2)], total.s()),
        chain(add.s(1, 1), group(add.s(1), add.s(2)), total.s()),
        chord([chain(add.s(1, 1), add.s(1)), add.s(2, 2)], total.s()),
        group(chain(add.s(1, 1), add.s(1)), chord([add.s(2)], total.s())),
    ],
)
def test_chains_groups_chords_and_their_nesting_become_flows(canvas):
    assert expressible(canvas)


@pytest.mark.parametrize(
    "canvas",
    [
        group(group(add.s(1), add.s(2)), add.s(3)),  # a group directly inside a group
        chain(add.s(1, 1), add.chunks([(1, 2), (3, 4)], 1)),  # chunks applies itself
        group(),
    ],
)
def test_what_a_flow_cannot_express_stays_on_celerys_mechanism(canvas):
    assert not expressible(canvas)


def test_a_flow_is_placed_by_the_first_task_its_canvas_runs():
    canvas = chain(chord([add.s(1), add.s(2)], total.s()), add.s(3))
    assert first_task(canvas).args == (1,)


def message(step: object) -> dict:
    return {"body": "", "headers": {"task": "app.add", "id": "t-1", FLOW_HEADER: step}, "properties": {}}


def test_a_members_flow_step_travels_in_its_message_and_back():
    step = FlowStep(FLOW_ID, ["a", "b"], "list", countdown=2.5, chord_body={"task": "app.total"})
    submission = submission_for("celery", message(step.header()), now_ms=0, max_size=1 << 20)
    assert submission.flow == step
    assert FlowStep(FLOW_ID).header() == {"flow": FLOW_ID, "after": [], "passes": ""}


@pytest.mark.parametrize(
    "header",
    [
        {"flow": "not-a-uuid", "after": [], "passes": ""},
        {"flow": FLOW_ID, "after": "a", "passes": ""},
        {"flow": FLOW_ID, "after": [1], "passes": ""},
        {"flow": FLOW_ID, "after": [], "passes": "all"},
        {"flow": FLOW_ID, "after": [], "passes": "", "countdown": "soon"},
        {"flow": FLOW_ID, "after": [], "passes": "", "eta": "tomorrow"},
        {"flow": FLOW_ID, "after": [], "passes": "", "chord_body": "app.total"},
        {"after": []},
        "flow",
    ],
)
def test_a_malformed_flow_step_is_refused_at_publish_naming_the_header(header):
    with pytest.raises(PublishError, match=FLOW_HEADER):
        submission_for("celery", message(header), now_ms=0, max_size=1 << 20)


def test_a_waiting_members_countdown_or_eta_counts_from_when_it_may_run():
    now = 1_700_000_000_000
    assert FlowStep(FLOW_ID).runnable_from(now) is None
    assert FlowStep(FLOW_ID, countdown=2).runnable_from(now) == now + 2000
    assert FlowStep(FLOW_ID, eta="2023-11-14T22:13:30+00:00").runnable_from(now) == now + 10_000
    assert FlowStep(FLOW_ID, eta="2023-11-14T22:13:10+00:00").runnable_from(now) is None  # already past
