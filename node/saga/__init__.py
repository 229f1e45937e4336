"""Cross-partition transfers: the saga driver that moves debited money to its destination."""
