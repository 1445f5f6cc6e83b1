"""The password hasher: scrypt at OWASP's minimum strength, quicker per login than PBKDF2.

Django's default PBKDF2 (1,000,000 SHA-256 iterations) cost 0.5-0.7 s of one core per login
on these 2-core machines, and several seconds when the worker, gateway and model servers
shared the cores. scrypt with N=2**14, r=8, p=5 is one of OWASP's equal-strength minimum
settings (Password Storage Cheat Sheet: N=2**17/p=1 ... N=2**13/p=10) and is memory-hard,
which PBKDF2 is not; it measured 0.3 s here. Django's own scrypt default (p=1) is below
that minimum, hence the subclass.
"""

from __future__ import annotations

from django.contrib.auth.hashers import ScryptPasswordHasher


class OwaspScryptPasswordHasher(ScryptPasswordHasher):
    # The algorithm name stays "scrypt": the parameters are stored in each hash, so Django's
    # own hasher verifies these hashes too, and raising p later re-hashes on next login.
    work_factor = 2**14
    block_size = 8
    parallelism = 5
