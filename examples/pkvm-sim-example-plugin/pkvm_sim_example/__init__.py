"""A worked example of a pkvm-sim plugin: a proposal and a host behaviour, registered by
entry point (pyproject.toml), usable by name in scenarios, `run`, `compare` and `audit`."""
