"""Membership at run time: the reconciler that makes the node follow the cluster map, and
the pre-seeding of a joining replica from a peer's snapshot."""
