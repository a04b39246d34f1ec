"""The one exception type users see: a clear message, printed by the CLI with exit code 2."""
from __future__ import annotations


class SpecsimError(Exception):
    """Bad user input (scenario, profile, CSV, arguments): the message names the file and field."""


def did_you_mean(name: object, choices) -> str:
    """' (did you mean 'x'?)' for the closest of `choices` to a misspelt `name`, else ''."""
    import difflib
    # Never the name itself: a key valid in another section is no spelling mistake.
    close = difflib.get_close_matches(str(name), [str(c) for c in choices if str(c) != str(name)],
                                      n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""
