"""Marketplace: the published models, their contracts, prices and availability."""
