"""HTTP: the token-endpoint client, reading its answers, deadlines, connection
limits, origins and the Basic credential.

Nothing here is public API: import from :mod:`genesys_token`.
"""
