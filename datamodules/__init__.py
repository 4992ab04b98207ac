"""Lightning data modules, one file per task."""
