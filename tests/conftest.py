pytest_plugins = ["ff_celery.pytest_plugin"]
