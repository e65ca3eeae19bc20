"""Billing: wallets in credits, one usage record per run, a ledger of every balance change."""
