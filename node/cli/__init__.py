"""`walletctl`, the command line's entry point, and what only it runs: local clusters up
and down (launcher) and the `make run` demo."""
