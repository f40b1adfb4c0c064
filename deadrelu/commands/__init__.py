"""CLI command groups beyond ``scan`` and ``report``; each module exposes ``register(app)``."""
