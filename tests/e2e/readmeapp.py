"""The Celery app the README's examples run in, configured only by its URLs (READMEAPP_URL,
broker and backend alike): it never imports ff_celery itself and calls no setup.

At import, the publisher and the worker alike run what each README Python block defines for an
app (its settings, imports, tasks and functions), each block in a namespace of its own holding
only ``app`` and the user's own helpers the examples call (below). The rest of a block (what a
caller does: calls, loops, ``with``) is run by its test, in the same namespace: ``NAMESPACES``.
"""

import os
from types import SimpleNamespace
from typing import Any

import redis
from celery import Celery, current_task
from readme_blocks import blocks, defines_for_the_app, is_definition, run

URL = os.environ.get("READMEAPP_URL", "flowfabric://127.0.0.1:6379/0")
TOKENS_PER_CALL = 120_000  #: what the fake LLM reports for each call

app = Celery("readmeapp", broker=URL, backend=URL)


def journal() -> redis.Redis:
    """Where the helpers note what they were given (keys ``readme:*``)."""
    return redis.Redis.from_url(URL.replace("flowfabric://", "redis://", 1))


@app.task
def merge(summaries):
    """The chord body of the budget example."""
    return summaries


def render(invoice_id):
    journal().rpush(f"readme:rendered:{invoice_id}", 1)
    return f"draft of {invoice_id}"


def send_approval_email(link):
    journal().rpush("readme:approval-links", link)


def publish(draft):
    return {"published": True, "draft": draft}


def prompt_for(doc_id):
    return f"summarize {doc_id}"


def llm(prompt):
    """Notes which task called it (``readme:llm-calls``: task ids)."""
    journal().rpush("readme:llm-calls", current_task.request.id)
    return SimpleNamespace(usage=SimpleNamespace(total_tokens=TOKENS_PER_CALL), cost=0.01, text=f"summary: {prompt}")


def load(dataset_id):
    return [f"{dataset_id} row {number}" for number in range(6)]


def chunks(rows):
    return [rows[start : start + 2] for start in range(0, len(rows), 2)]


def process(chunk):
    journal().rpush("readme:processed", *chunk)


USER_HELPERS = {
    "app": app,
    **{helper.__name__: helper for helper in (merge, render, send_approval_email, publish, prompt_for, llm)},
    **{helper.__name__: helper for helper in (load, chunks, process)},
}

#: Each app-defining block's namespace, by the block's name.
NAMESPACES: dict[str, dict[str, Any]] = {}
for block in blocks():
    if defines_for_the_app(block):
        namespace = NAMESPACES[block.name] = {"__name__": __name__, **USER_HELPERS}
        run([statement for statement in block.statements() if is_definition(statement)], namespace, block.document)
