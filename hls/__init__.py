"""tessera.hls."""
