"""shadowtap.wire: HTTP on the wire, no policy.

HTTP/1 framing (``http1``, sans-IO; ``message`` for whole messages held in memory) and the llhttp
client connection and pool (``client``), used by the proxy (primary and shadows), the replayer and
the capture-file importers; the HTTP/2 client connection and pool on ``h2`` (``h2``), behind the same
shape, for HTTP/2 primaries. Imports nothing of the other packages.

The framing and the client run compiled (mypyc) with the proxy's data path when a build matching
the sources is present (``shadowtap.wire.native``); activation comes before either is imported.
"""

# ruff: noqa: E402  (the compiled modules are chosen before any of them is imported)
from shadowtap.wire import native

native.activate(__path__, "wire")
