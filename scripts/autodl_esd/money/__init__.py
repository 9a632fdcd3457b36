"""Money: what a deployment will cost (estimate), what it has cost (spend), the wallet, and the
guards that stop a forgotten deployment."""
