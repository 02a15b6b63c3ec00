"""The citizens: population, physiology, exacerbations, regimes and sessions (vectorised with numpy)."""
