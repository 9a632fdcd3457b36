"""The service registry of one deployment: the document, the watchers that keep it current,
where it is kept (a file, Redis) and the loopback endpoint that serves it.

Imports nothing itself: `discover_services.py --help` stays cheap.
"""
