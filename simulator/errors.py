"""The one exception type users see: a clear message, printed by the CLI with exit code 2."""
from __future__ import annotations


class SpecsimError(Exception):
    """Bad user input (scenario, profile, CSV, arguments): the message names the file and field."""
