"""One thin adapter per `trixmed` subcommand: parse flags, load the config, call the library, print.

Each module has `add_arguments(parser)` and `main(args) -> int`; `common` holds what they share.
"""
