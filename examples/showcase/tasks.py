"""The showcase tasks: an approval gate that waits for a signed callback, an LLM-style call
that reports its token use to a budget, and a long job that streams its log and progress."""

import json
import random
import time

import redis

import ff_celery

from .celery import URL, app

#: Where request_approval "emails" its approval links (a Redis list the script reads).
MAILBOX = "showcase:mailbox"


def store() -> redis.Redis:
    return redis.Redis.from_url(URL.replace("flowfabric://", "redis://", 1))


@app.task
def add(x, y):
    return x + y


# -- approval gate -----------------------------------------------------------------------------


@app.task(bind=True)
def request_approval(self, document, amount, approvals_url):
    """Asks a person to approve ``document``, then waits (suspended, holding no worker slot)
    until they click a link; runs again from the top when they do."""
    point = ff_celery.waitpoint("approval")  # created first, so its links can go out before the wait
    # Code before the wait runs again when the task resumes: send the mail only once.
    if store().set(f"showcase:mailed:{self.request.id}", 1, nx=True, ex=86_400):
        mail = {
            "to": "approver@example.com",
            "subject": f"Please approve {document} ({amount} EUR)",
            "approve": point.callback_url(approvals_url, "approve"),
            "reject": point.callback_url(approvals_url, "reject"),
        }
        store().rpush(MAILBOX, json.dumps(mail))
    decision = point.wait("approve", "reject", timeout=600)[0]  # a timeout fails the task
    by = decision.payload.get("by") if isinstance(decision.payload, dict) else None
    note = decision.payload.get("note") if isinstance(decision.payload, dict) else None
    return {"document": document, "decision": decision.name, "by": by, "note": note, "via": decision.source_identity}


# -- LLM calls under a token budget ------------------------------------------------------------


@app.task(bind=True)
def llm_call(self, prompt, chunks=3):
    """A simulated LLM call that streams its answer in chunks and reports the tokens of each
    chunk as it goes (a dedup key per chunk, so a retried chunk is counted once). A hard
    budget limit stops it in the middle with BudgetExceeded."""
    rng = random.Random(prompt)  # the same prompt spends the same tokens: a reproducible demo
    spent = 0
    for chunk in range(chunks):
        time.sleep(rng.uniform(0.15, 0.3))  # "generating"
        tokens = rng.randint(150, 250)
        ff_celery.report_usage(tokens=tokens, dedup_key=f"chunk-{chunk}")  # raises BudgetExceeded past the limit
        spent += tokens
    return {"prompt": prompt, "answer": f"<a summary of {prompt.removeprefix('summarise ')}>", "tokens": spent}


# -- streaming progress ------------------------------------------------------------------------


@app.task(bind=True)
def build_index(self, documents, pause=0.25):
    """Indexes documents one by one, streaming a log frame and a progress report for each."""
    ff_celery.append_frame("log", f"indexing {len(documents)} documents")
    terms = 0
    for done, document in enumerate(documents, start=1):
        time.sleep(pause)  # "indexing"
        found = 120 * len(document.split()) + len(document)
        terms += found
        ff_celery.append_frame("log", f"indexed {document!r} ({found} terms)", correlation_id=document)
        ff_celery.progress(100 * done / len(documents), f"{done}/{len(documents)} documents")
    ff_celery.append_frame("log", "index written")
    return {"documents": len(documents), "terms": terms}
