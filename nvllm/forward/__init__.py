"""How a step's forward pass runs: one strategy per module (base.py holds the contract)."""
