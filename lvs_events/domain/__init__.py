"""The pure core: configuration, events, the fold and the render.

Nothing under this package imports asyncio, grpc, etcd, pyroute2 or does I/O.
"""
