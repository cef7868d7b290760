"""`ganray studio OUT`: where the page is served, who may read it, and the services it links to."""
from __future__ import annotations

import re

from pydantic import Field, field_validator

from ganray.config.base import Section

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class StudioConfig(Section):
    """The studio's server: address, access key, page size, and the optional face API and human page."""

    host: str = Field("127.0.0.1", min_length=1, description="address to listen on (0.0.0.0: every interface; "
                                                              "set an api_key)")
    port: int = Field(8770, ge=0, lt=65536, description="0: any free port (printed)")
    api_key: str | None = Field(
        None, min_length=1, description="required in X-API-Key on every /api/ request when set (else "
                                        "$GANRAY_API_KEY, the face API's setting); also sent to face_api")
    face_api: str | None = Field(None, description="a running face API (`ganray serve`), e.g. "
                                                   "http://127.0.0.1:8000: a face's detail re-renders through it")
    human_eval: str | None = Field(None, description="a running human pairwise page (`ganray eval human serve`): "
                                                     "linked from the studio")
    page_size: int = Field(100, gt=0, le=500, description="faces per page (a request may ask for up to 500)")

    @field_validator("api_key")
    @classmethod
    def _printable_ascii_key(cls, key: str | None) -> str | None:
        if key is not None and not re.fullmatch(r"[!-~]+", key):  # it travels in an HTTP header
            raise ValueError("api_key must be printable ASCII without spaces (it is sent in the X-API-Key header)")
        return key

    @field_validator("face_api", "human_eval")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", url):
            raise ValueError(f"must be an http(s) URL without credentials, query or fragment, got {url!r}")
        return url.rstrip("/") if url else url
