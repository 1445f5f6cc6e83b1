"""Modelyard's prediction gateway: a separate ASGI process with no Django in it.

``gateway.routes`` is the Redis contract shared with the rollout services; ``gateway.app`` the
ASGI app; ``python -m gateway`` runs it.
"""
