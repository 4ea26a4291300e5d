"""Who is calling: `Authorization: Bearer <key>` checked against the key store on every request."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from producer.gateway.keys import ApiKey
from producer.gateway.services import Services
from producer.http_errors import Unauthorized

bearer = HTTPBearer(auto_error=False, description="an API key from `visionq keys create TENANT`")


def services_of(request: Request) -> Services:
    return request.app.state.services


def caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKey:
    anonymous = request.app.state.anonymous
    if anonymous is not None:
        return anonymous
    if credentials is None:
        raise Unauthorized("send an API key as `Authorization: Bearer <key>` (visionq keys create TENANT)")
    key = services_of(request).keys.authenticate(credentials.credentials)
    if key is None:
        raise Unauthorized("this API key is unknown or revoked")
    return key


Caller = Annotated[ApiKey, Depends(caller)]
