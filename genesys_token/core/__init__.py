"""The core: the token value and its schedule, single flight, acquisition, refresh,
the scheduler, counted uses, rotation, rejections, the fork registry and clocks.

Nothing here is public API: import from :mod:`genesys_token`.
"""
