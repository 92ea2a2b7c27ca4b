"""The declared lower bounds of the core dependencies, as exact pins, for `make test-minimum`.

Reads ``install_requires`` in setup.cfg, and the extras in :data:`EXTRAS` (the minimum run
also tests those), so the pins cannot drift from what users are promised. ``--pins`` prints ``name[extras]==bound`` for pip; ``--check`` exits 1 unless the
installed versions are exactly those bounds (a resolver that quietly picked newer versions
would make the leg prove nothing).
"""

from __future__ import annotations

import configparser
import re
import sys
from importlib import metadata
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"
#: Extras whose lower bounds are pinned too: RedisStore's TLS host-name check depends on the
#: redis-py version, so the oldest one allowed is tested.
EXTRAS = ("redis",)
_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9_.-]+)(?P<extras>\[[^\]]*\])?>=(?P<bound>[0-9.]+)"
    r'(\s*;\s*python_version\s*<\s*"(?P<below>[0-9.]+)")?$'
)


def lower_bounds() -> list[tuple[str, str, str]]:
    """(name, extras, bound) for every core requirement and every requirement of the
    :data:`EXTRAS`; each must have a ``>=`` bound."""
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    lines = config["options"]["install_requires"].split("\n")
    for extra in EXTRAS:
        lines += config["options.extras_require"][extra].split("\n")
    bounds = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        match = _REQUIREMENT.match(line)
        if match is None:
            sys.exit(f"lower_bounds: {line!r} has no plain '>=' lower bound")
        below = match["below"]
        if below and sys.version_info >= tuple(int(p) for p in below.split(".")):
            continue  # a backport this Python does not need (tomli before 3.11)
        bounds.append((match["name"], match["extras"] or "", match["bound"]))
    return bounds


def _release(version: str) -> tuple[int, ...]:
    parts = [int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3]]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def main(argv: list[str]) -> int:
    if argv == ["--pins"]:
        print(" ".join(f"{name}{extras}=={bound}" for name, extras, bound in lower_bounds()))
        return 0
    if argv == ["--check"]:
        wrong = [
            f"{name} {metadata.version(name)} (declared lower bound {bound})"
            for name, _, bound in lower_bounds()
            if _release(metadata.version(name)) != _release(bound)
        ]
        for line in wrong:
            print(f"lower_bounds: installed {line}", file=sys.stderr)
        return 1 if wrong else 0
    print("usage: lower_bounds.py --pins | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
