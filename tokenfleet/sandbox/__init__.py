"""Local fake services that answer in each provider's real format (DEV mode and tests).

Each module runs a small stdlib HTTP server in a daemon thread, with fault injection, so
rotations can be shown and tested on a bare machine. Never used in prod mode.
"""
