"""The run configuration: the schema (fields carry their checks and help), the typed validator, recipe files."""
