"""Built-in connectors. They register through the `retention.connectors` entry points, like any plugin."""
