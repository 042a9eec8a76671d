from collections.abc import AsyncIterator

import pytest

from cloudvm.testing import close_named_clouds


@pytest.fixture(autouse=True)
async def _close_named_clouds() -> AsyncIterator[None]:
    yield
    await close_named_clouds()
