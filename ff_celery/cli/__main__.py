from ff_celery.cli import main

main()
