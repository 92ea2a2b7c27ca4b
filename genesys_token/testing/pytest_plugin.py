"""pytest plugin: the ``genesys_emulator`` fixture (a started emulator per test).

Configure it per test with ``@pytest.mark.genesys_emulator(**GenesysEmulator kwargs)``.
Loaded through a ``pytest11`` entry point before coverage starts, so nothing of
``genesys_token`` is imported at module level.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from genesys_token.testing.emulator import GenesysEmulator


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "genesys_emulator(**kwargs): GenesysEmulator options for the fixture"
    )


@pytest.fixture
def genesys_emulator(request: pytest.FixtureRequest) -> Iterator[GenesysEmulator]:
    """A started :class:`~genesys_token.testing.GenesysEmulator`, stopped after the test."""
    from genesys_token.testing.emulator import GenesysEmulator

    marker = request.node.get_closest_marker("genesys_emulator")
    with GenesysEmulator(**(marker.kwargs if marker else {})) as emulator:
        yield emulator
