"""One module per pkvm-sim command; each has ``register(subparsers)`` and ``main(args)``."""
