"""Tests of ff_celery/engine/duties/: scanners, retention, the exporter."""
