"""Tasks of the example project: arithmetic for a chain and a chord, a task that retries,
and a slow report."""

import random
import time

from .celery import app


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(numbers):
    return sum(numbers)


class PriceFeedDown(ConnectionError):
    pass


@app.task(bind=True, max_retries=4, default_retry_delay=0.5)
def fetch_price(self, symbol, fail_times=2):
    """Retries (as attempts of the same execution) until the flaky feed answers."""
    if self.request.retries < fail_times:
        raise self.retry(exc=PriceFeedDown(f"price feed down for {symbol}"))
    return {"symbol": symbol, "price": round(random.uniform(10, 100), 2), "retries": self.request.retries}


@app.task
def slow_report(seconds):
    time.sleep(seconds)
    return f"report took {seconds}s"
