"""Fleet manager: device registry, staged model rollouts, drift collection, the ``fleet`` CLI."""
