"""The gRPC services (WalletService, AdminService, PeerService) and the request guard.

No service imports another.
"""
