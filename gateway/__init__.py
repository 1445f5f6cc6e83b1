"""Modelyard's prediction gateway: a separate ASGI process with no Django in it.

``gateway.routes`` and ``gateway.replica_reports`` are the Redis contracts shared with the
platform (routes in; in-flight reports and repair requests out); ``gateway.app`` the ASGI app,
``gateway.balancer`` its choice of replica, ``gateway.repairs`` its repair requests;
``python -m gateway`` runs it.
"""
