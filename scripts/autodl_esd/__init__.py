"""Shared internal package of the autodl-elastic-deploy skill.

It owns everything the entry scripts have in common: token/host settings, the HTTP client,
config loading and validation, the command lint, the JSON output contract and exit codes.
Entry scripts stay thin: they parse arguments, call into this package and shape a result.
Only this package performs HTTP or writes to stdout.

Nothing heavy happens at import time; `requests` and `jsonschema` are imported lazily so
that `--help` stays instant.
"""
