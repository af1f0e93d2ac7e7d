"""shadowtap.wire: HTTP on the wire, no policy.

HTTP/1 framing (sans-IO) and the llhttp client connection and pool, used by the proxy (primary and
shadows), the replayer and the capture-file importers. Imports nothing of the other packages.
"""
