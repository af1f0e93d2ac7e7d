"""proxy: the sidecar reverse proxy. Forwards to the primary untouched, mirrors a sample to shadows."""
