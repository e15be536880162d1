"""Sources of the Python-backend models. The build copies each model.py with its pure helper module
into the repository, so a served repository needs nothing from this package at run time."""
