"""Configured CSV imports (SPEC section 3.4): folders, manifests, PGP, schedules, e-mail."""
