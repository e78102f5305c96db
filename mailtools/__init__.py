"""mailtools: composable Unix mail utilities sharing one core and one on-disk store."""

__version__ = "0.1.0"
