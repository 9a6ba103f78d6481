"""The ``learnloop`` command line: the top of the layers. ``cli/main.py`` gathers the pipeline
commands (``orchestration/cli.py``) and the service commands (``service/cli.py``) into one group;
nothing else imports this package."""
