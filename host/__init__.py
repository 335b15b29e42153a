"""tessera.host."""
