"""basisnet."""
