from collections.abc import AsyncIterator

import pytest

from cloudvm.testing import close_named_clouds


@pytest.fixture(autouse=True)
async def _close_named_clouds() -> AsyncIterator[None]:
    # Clouds made through load_driver("fake") are process-wide: close them so
    # no SSH server or state leaks from one test into the next.
    yield
    await close_named_clouds()
