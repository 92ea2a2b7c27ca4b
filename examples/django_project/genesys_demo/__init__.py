"""The demo app: one view that calls Genesys Cloud through a GenesysAuth session."""
