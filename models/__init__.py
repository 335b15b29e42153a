"""tessera.models."""
