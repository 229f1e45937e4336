"""Access control: the token checks, TLS and the node's own credentials."""
