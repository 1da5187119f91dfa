"""Ray's ``ray.experimental`` names that rayhpc provides."""
