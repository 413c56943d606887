"""The web console in a real browser (Debian's chromium through Playwright) against real
workers: a chain drawn with its members turning green as they run, a waiting task approved
from its page, a failed task replayed, a budget-blocked task shown as blocked, and an
unauthenticated visitor refused every action."""

from __future__ import annotations

import json
import uuid

import pytest
from celery import chain
from e2e.conftest import execution, wait_for
from playwright.sync_api import expect

from ff_celery.features import budgets

from .conftest import sign_in

GREEN = "rgb(46, 157, 79)"

pytestmark = pytest.mark.usefixtures("console_worker")


def test_a_chain_is_drawn_and_its_members_turn_green_as_they_run(ffapp, page, screenshots):
    task_ids = [str(uuid.uuid4()) for _ in range(3)]  # each step runs until the test opens its gate
    result = chain(*(ffapp.gated.si().set(task_id=task_id) for task_id in task_ids)).apply_async()
    page.goto(f"/flow?id={task_ids[0]}")
    assert page.locator("svg.dag g.node").count() == 3
    assert page.locator("svg.dag line.edge").count() == 2
    page.evaluate("window.loadedOnce = true")  # a reload would drop it: the states below come live

    def states() -> list[str]:
        return page.eval_on_selector_all("svg.dag g.node", "nodes => nodes.map(node => node.dataset.state)")

    for step, task_id in enumerate(task_ids):  # the members drawn in chain order, one column each
        assert "completed" not in states()[step:]
        ffapp.runs().set(f"ffapp:go:{task_id}", "1")
        expect(page.locator("svg.dag g.node").nth(step)).to_have_attribute("data-state", "completed")
        assert "completed" not in states()[step + 1 :]  # green one by one, as they run
        if step == 0:
            page.screenshot(path=screenshots / "flow-running.png", full_page=True)
    assert page.evaluate("window.loadedOnce") is True
    fills = page.eval_on_selector_all("svg.dag g.node rect", "rects => rects.map(r => getComputedStyle(r).fill)")
    assert fills == [GREEN] * 3
    assert result.get(timeout=15) == "opened"
    page.screenshot(path=screenshots / "flow.png", full_page=True)


def test_an_executions_frames_and_progress_stream_into_its_page(ffapp, page, screenshots):
    report = ffapp.streaming_report.delay(10, 0.5)
    assert wait_for(lambda: execution(ffapp, report.id).core.get("progress_pct"), timeout=20)  # step 1 written
    page.goto(f"/execution?id={report.id}")  # seconds before it ends
    page.evaluate("window.loadedOnce = true")
    expect(page.locator("#frames li", has_text="log: line 3")).to_have_count(1)
    assert page.evaluate("window.loadedOnce") is True  # the frames came live, not by a reload
    page.wait_for_selector('#live-state[data-state="completed"]')  # then it reloads once, with the result
    expect(page.locator("#frames li", has_text="log: line")).to_have_count(10)
    expect(page.locator("#progress")).to_have_js_property("value", 100)
    page.screenshot(path=screenshots / "execution-frames.png", full_page=True)


def test_a_waiting_task_is_approved_from_its_page_and_completes(ffapp, page, console, screenshots):
    waiting = ffapp.await_approval.delay()
    assert wait_for(lambda: execution(ffapp, waiting.id).public_state == "suspended", timeout=20)
    page.goto("/waiting")
    row = page.locator("#waiting tr", has_text=waiting.id)
    assert "approve, reject" in row.inner_text()
    page.screenshot(path=screenshots / "waiting.png", full_page=True)
    sign_in(page)
    page.goto("/waiting")
    page.locator("#waiting tr", has_text=waiting.id).locator("a").click()
    page.wait_for_selector("#signal-form")
    page.screenshot(path=screenshots / "execution-suspended.png", full_page=True)
    page.select_option("#signal-form select[name=name]", "approve")
    page.fill("#signal-form textarea[name=payload]", '{"by": "the web console"}')
    page.click("#send-signal")
    assert "signal" in page.inner_text("#done")
    assert waiting.get(timeout=20) == {"signals": [["approve", {"by": "the web console"}, "token"]]}
    page.wait_for_selector('#live-state[data-state="completed"]')
    page.wait_for_selector("#result")  # the page reloaded once it ended, with the result
    assert "approve" in page.inner_text("#result")
    page.screenshot(path=screenshots / "execution-approved.png", full_page=True)
    entries = [json.loads(line) for line in console.audit().splitlines()]
    assert {"who": "token", "action": "signal", "signal": "approve"}.items() <= entries[-1].items()


def test_a_failed_task_is_replayed_from_its_page_and_succeeds(ffapp, page, screenshots):
    key = f"consoleapp:fixed:{uuid.uuid4().hex}"
    failed = ffapp.app.send_task("consoleapp.fails_until_fixed", args=[key])
    assert wait_for(lambda: execution(ffapp, failed.id).public_state == "failed", timeout=20)
    sign_in(page)
    page.goto(f"/execution?id={failed.id}")
    assert "not fixed yet" in page.inner_text("#traceback")
    page.screenshot(path=screenshots / "execution-failed.png", full_page=True)
    ffapp.runs().set(key, "fixed by the operator")
    page.click("#replay")
    assert "replay" in page.inner_text("#done")
    page.wait_for_selector('#live-state[data-state="completed"]', timeout=30_000)
    page.wait_for_selector("#result")
    assert "fixed by the operator" in page.inner_text("#result")
    assert ffapp.app.AsyncResult(failed.id).get(timeout=15) == "fixed by the operator"
    page.screenshot(path=screenshots / "execution-replayed.png", full_page=True)


def test_a_budget_blocked_task_is_shown_as_blocked(ffapp, page, screenshots):
    name = f"console-{uuid.uuid4().hex[:8]}"
    budgets.create_budget(ffapp.app, name, hard={"tokens": 10})
    assert ffapp.spend_tokens.apply_async((1, 10), ff_budgets=[name]).get(timeout=20) == 10
    held = ffapp.spend_tokens.apply_async((1, 5), ff_budgets=[name])
    assert wait_for(lambda: execution(ffapp, held.id).core.get("blocking_reason") == "waiting_for_budget", timeout=20)
    page.goto(f"/execution?id={held.id}")
    assert page.get_attribute("#live-state", "data-state") == "rate_limited"
    assert "waiting_for_budget" in page.inner_text("#blocking")
    used_and_hard = page.locator("#budgets tr", has_text="tokens").inner_text().split()[-3:]
    assert used_and_hard == ["tokens", "10", "10"]
    page.screenshot(path=screenshots / "execution-blocked.png", full_page=True)
    page.goto("/executions?state=rate_limited")
    assert page.locator("#executions tr", has_text=held.id).count() == 1
    page.screenshot(path=screenshots / "executions.png", full_page=True)
    page.goto("/")
    page.screenshot(path=screenshots / "lanes.png", full_page=True)
    budgets.reset_budget(ffapp.app, name)
    assert held.get(timeout=20) == 5


def test_an_unauthenticated_visitor_is_refused_every_action(ffapp, page, console):
    waiting = ffapp.await_approval.delay()
    assert wait_for(lambda: execution(ffapp, waiting.id).public_state == "suspended", timeout=20)
    page.goto(f"/execution?id={waiting.id}")
    assert page.locator("form[action$='/actions/cancel'], #signal-form").count() == 0  # no forms offered
    waitpoint_id = execution(ffapp, waiting.id).core["current_waitpoint_id"]
    attempts = {
        "signal": {"execution_id": waiting.id, "waitpoint_id": waitpoint_id, "name": "approve", "payload": ""},
        "cancel": {"execution_id": waiting.id},
        "revoke": {"execution_id": waiting.id},
        "replay": {"execution_id": waiting.id},
    }
    for action, form in attempts.items():
        refused = page.request.post(f"/actions/{action}", form=form, max_redirects=0)
        assert refused.status == 403, (action, refused.status)
        assert "not signed in" in refused.text()
    sign_in(page)  # signed in, but a request without the page's CSRF token (a forged cross-site form) is refused too
    for action, form in attempts.items():
        forged = page.request.post(f"/actions/{action}", form={**form, "csrf_token": "forged"}, max_redirects=0)
        assert forged.status == 403, (action, forged.status)
    assert execution(ffapp, waiting.id).public_state == "suspended"  # nothing happened
    audited = [(entry["action"], entry["outcome"]) for entry in map(json.loads, console.audit().splitlines())][-9:]
    assert audited == [
        *((action, "refused: not signed in") for action in attempts),
        ("sign in", "signed in"),
        *((action, "refused: bad or missing CSRF token") for action in attempts),
    ]
    page.goto(f"/execution?id={waiting.id}")  # the operator, from the page, with its token
    page.click("#revoke")
    assert "revoke: revoked" in page.inner_text("#done")
    assert wait_for(lambda: execution(ffapp, waiting.id).public_state == "cancelled")
    assert ffapp.app.AsyncResult(waiting.id).state == "REVOKED"
