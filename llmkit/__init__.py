"""llmkit: language models built from scratch in PyTorch, as a command-line tool suite.

Importing the package is cheap on purpose: torch is imported only by the modules that need it,
so `llmkit --help` starts fast.
"""

__version__ = "0.1.0"
