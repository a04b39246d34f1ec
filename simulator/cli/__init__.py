"""The `specsim` command line: thin wrappers that parse arguments and call the library."""
from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Predict LLM serving performance with speculative decoding.")

# Feature modules add their commands through register(app). Keep this list explicit.
from simulator.cli import core as cli_core  # noqa: E402
from simulator.cli import sdsl as cli_sdsl  # noqa: E402
from simulator.cli import calibrate as cli_calibrate  # noqa: E402
from simulator.cli import profile as cli_profile  # noqa: E402
from simulator.cli import fidelity as cli_fidelity  # noqa: E402
from simulator.cli import engine as cli_engine  # noqa: E402
from simulator.cli import plan as cli_plan  # noqa: E402

for _module in (cli_core, cli_sdsl, cli_calibrate, cli_profile, cli_fidelity, cli_engine, cli_plan):
    _module.register(app)


def main() -> None:
    import sys
    # `specsim profile import-vidur DIR` (the spelling) is the same as `specsim import-vidur DIR`.
    if sys.argv[1:3] == ["profile", "import-vidur"]:
        del sys.argv[1]
    app()


if __name__ == "__main__":
    main()
