from __future__ import annotations

import logging

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework import authentication, exceptions
from rest_framework.throttling import SimpleRateThrottle

from accounts.services import token_authenticate
from core.errors import NotAllowed

logger = logging.getLogger(__name__)


class TokenAuthFailureThrottle(SimpleRateThrottle):
    """Failed token authentications per client address (``token_auth_failures`` rate).

    Only failures are counted, so a busy CI pipeline with a good key is never slowed; past
    the limit every key from that address, good or bad, is refused until the window moves
    on, so guessing gains nothing from a lucky hit during the lockout.
    """

    scope = "token_auth_failures"
    # Set by SimpleRateThrottle.__init__ (parse_rate); the DRF stubs leave them out.
    num_requests: int
    duration: int
    # False when the cache could not be read: the request then is neither limited nor counted.
    cache_up: bool

    def get_rate(self) -> str:
        # Read at each request (DRF binds its rates at import), so settings can change it.
        return settings.MODELYARD_TOKEN_AUTH_FAILURE_RATE

    def get_cache_key(self, request, view) -> str:
        # get_ident trusts X-Forwarded-For only as far as REST_FRAMEWORK["NUM_PROXIES"] says.
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def check(self, request) -> None:
        self.key = self.get_cache_key(request, None)
        self.now = self.timer()
        try:
            self.history = self.cache.get(self.key, [])
        except RedisError:
            # Fail open: an outage of the cache must not take the whole API down with it.
            logger.warning("token auth throttle skipped: cache unavailable", exc_info=True)
            self.cache_up = False
            return
        self.cache_up = True
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        if len(self.history) >= self.num_requests:
            raise exceptions.Throttled(
                wait=self.wait(),
                detail="Too many failed API token authentications from this address.",
            )

    def record_failure(self) -> None:
        if not self.cache_up:
            return
        self.history.insert(0, self.now)
        try:
            self.cache.set(self.key, self.history, self.duration)
        except RedisError:
            logger.warning("token auth failure not counted: cache unavailable", exc_info=True)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Token <key>`; request.auth is the ApiToken (its scopes limit the role)."""

    keyword = "Token"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        throttle = TokenAuthFailureThrottle()
        throttle.check(request)
        if len(header) != 2:
            throttle.record_failure()
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: expected 'Token <key>'."
            )
        try:
            token = token_authenticate(key=header[1].decode("ascii", errors="replace"))
        except NotAllowed as exc:
            throttle.record_failure()
            raise exceptions.AuthenticationFailed(exc.message) from exc
        user = token.user
        user.audit_via = f"api:{token.name}"[:32]
        return user, token

    def authenticate_header(self, request) -> str:
        return self.keyword
