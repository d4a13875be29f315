"""The subcommands of `hocba-signer`, one module a subject; daemon/cli.py assembles them.

Each module has `add_parsers(sub)` and its handlers; every handler imports what it
runs when it runs, since the parser is built by every process, the HSM workers'
included. `common` has the settings, the preflight and the output they share.
"""
