"""``python -m cli`` = ``learnloop``."""

from cli.main import main

main()
