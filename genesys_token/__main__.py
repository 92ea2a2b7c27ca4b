"""``python -m genesys_token``: the ``genesys-token`` command, where scripts are not on PATH."""

from genesys_token.cli import main

if __name__ == "__main__":  # pragma: no branch
    raise SystemExit(main())
