"""A JSON serializer for Django's Redis cache.

Django's RedisCache pickles values, so anyone able to write to Redis could make the web process
unpickle a payload of their choosing. Modelyard loads no pickle outside the validation and batch
children (tests/security), so the cache holds JSON only: callers store plain data.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder


class JsonRedisSerializer:
    def dumps(self, obj: Any) -> bytes | int:
        # Plain ints stay raw, as in Django's own serializer, so cache.incr() keeps working.
        if type(obj) is int:
            return obj
        return json.dumps(obj, cls=DjangoJSONEncoder, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        try:
            return int(data)
        except ValueError:
            return json.loads(data)
