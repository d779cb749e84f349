"""Trust: certificates (``tls``, ``pki``), verified identities (``principal``), what each identity
may do (``policy``, pure) and the gRPC server interceptor that enforces it (``interceptor``).

See docs/security.md for the threat model, the roles and certificate rotation.
"""
