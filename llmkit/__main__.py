"""`python -m llmkit` runs the command line (also the entry point for `torchrun -m llmkit`)."""

from llmkit.cli import main

main()
