"""The HTTP/JSON gateway: a client of the cluster through the SDK (client/)."""
