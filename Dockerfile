FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ff_celery ./ff_celery
COPY lua ./lua
COPY examples ./examples
RUN pip install --no-cache-dir .
CMD ["ff-celery", "scanners", "--url", "redis://valkey:6379/0"]
