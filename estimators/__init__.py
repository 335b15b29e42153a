"""tessera.estimators."""
