"""`python -m grpod.daemon` is the `grpod` command (used for `grpod up`'s children)."""

from grpod.daemon.cli import main

main()
