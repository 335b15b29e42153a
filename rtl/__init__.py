"""tessera.rtl."""
