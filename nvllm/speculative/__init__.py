"""Speculative decoding: a drafter per module (base.py holds the contract, verify.py verification)."""
