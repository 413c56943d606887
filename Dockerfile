FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ff_celery ./ff_celery
COPY lua ./lua
COPY examples ./examples
RUN pip install --no-cache-dir .
WORKDIR /app/examples
# the example project's worker (it also runs the engine scanners, leader-elected)
CMD ["celery", "-A", "proj", "worker", "-l", "INFO"]
