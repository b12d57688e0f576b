"""An in-process app over the demo library, for the API tests (TestClient)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import only_these_settings


@dataclass
class Api:
    client: TestClient
    svc: Any
    parts: Any
    library: Path

    def get(self, url: str, **kw: Any) -> Any:
        return self.client.get(url, **kw)

    def ok(self, url: str, **kw: Any) -> Any:
        r = self.client.get(url, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def item_id(self, name_part: str) -> int:
        """The id of the first item whose path contains name_part."""
        page = self.ok("/api/search", params={"path_glob": f"*{name_part}*", "k": 1})
        assert page["results"], f"no item matching {name_part}"
        return int(page["results"][0]["item_id"])

    def with_config(self, **changes: Any) -> TestClient:
        """Another app over the same parts with some ApiConfig changed."""
        from api import Services, create_app

        svc = Services(dataclasses.replace(self.svc.config, **changes), self.svc.catalog,
                       self.svc.engines, self.svc.classifier_factory)  # fmt: skip
        return TestClient(create_app(svc, background=False), raise_server_exceptions=False)


@contextmanager
def demo_api(demo_lib: Any) -> Iterator[Api]:
    from api import create_app
    from everlook.settings import Settings
    from everlook.wiring import Parts

    with pytest.MonkeyPatch.context() as mp:
        only_these_settings(mp, demo_lib.settings)
        parts = Parts(Settings())
        svc = parts.api_services([str(demo_lib.library)])
        app = create_app(svc, background=False)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Api(client, svc, parts, demo_lib.library)


def error_of(r: Any, status: int) -> dict[str, Any]:
    """The error body of a response, checked to be the one error shape."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert err["status"] == status and isinstance(err["code"], str) and err["message"], body
    return dict(err)
