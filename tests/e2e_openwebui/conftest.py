"""The OpenWebUI end-to-end tests run only when asked for by path
(``pytest tests/e2e_openwebui``, which ``make e2e-openwebui`` runs): they need
OpenWebUI's own venv and take minutes, so plain ``pytest`` leaves them out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_openwebui.openwebui import API_KEY, OpenWebUIServer, openwebui_server

HERE = Path(__file__).resolve().parent


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    asked = (Path(arg.split("::")[0]).resolve() for arg in config.args)
    if any(path == HERE or HERE in path.parents for path in asked):
        return None
    return True


@pytest.fixture(scope="session")
def openwebui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenWebUIServer]:
    """One OpenWebUI for the whole run (it takes 15-25 s to start); each test
    serves its upstream port with a bridge of its own."""
    with openwebui_server(tmp_path_factory.mktemp("openwebui"), API_KEY) as server:
        yield server
