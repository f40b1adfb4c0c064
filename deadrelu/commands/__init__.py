"""Command groups added to the ``deadrelu`` app by ``register(app)``."""
