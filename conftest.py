"""Repository-level pytest configuration: the plugin itself comes in through its pytest11 entry point."""

pytest_plugins = ["pytester"]
