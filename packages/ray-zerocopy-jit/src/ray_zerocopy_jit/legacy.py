"""Legacy TorchScript functions of the original project (placeholder)."""
