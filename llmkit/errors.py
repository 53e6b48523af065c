"""The one exception type users see: a message, the fix, and an exit code.

Anything raised as `LlmkitError` is printed by the CLI as `error: ...` plus `hint: ...` on stderr,
with no traceback. Any other exception is a bug in llmkit and keeps its traceback.
"""

from __future__ import annotations

# Exit codes: 2 for input the user can correct (recipe, arguments, files), 1 for a run that failed.
BAD_INPUT = 2
RUN_FAILED = 1


class LlmkitError(Exception):
    def __init__(self, message: str, hint: str | None = None, exit_code: int = BAD_INPUT):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\nhint: {self.hint}"
