"""A minimal Django project calling Genesys Cloud with genesys-token."""
