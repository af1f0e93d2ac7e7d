"""One module per `shadowtap` subcommand (see shadowtap/cli.py for the module protocol)."""
