"""Tests of ff_celery/engine/work/: claims, the claimer, budgets and admission, signals, lane shards."""
