"""``python -m genesys_token.testing [--port N] [--format jwt] ...``: run the emulator."""

from genesys_token.testing._cli import run

if __name__ == "__main__":  # pragma: no branch
    raise SystemExit(run())
