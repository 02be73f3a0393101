"""TUF repository writes, one module per concern: keyring (keys and signature checks),
signed_views (CI, production and wave views), repository (a factory with its repository, CI
builds), wave_targets (a wave's targets from build to production), refresh (periodic
re-signing) and root_changes (offline keys and new root versions)."""
