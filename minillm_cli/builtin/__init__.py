"""The builtin plugins: they register through the same hooks as third-party plugins."""
