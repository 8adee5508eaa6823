"""Built-in plugins. Each is an ordinary plugin that uses only the public API in :mod:`pipeline`."""
