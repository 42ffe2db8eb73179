"""``edgerec demo``: the whole loop on a small CTR model, end to end."""
