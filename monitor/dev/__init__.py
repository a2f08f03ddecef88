"""Development aids outside the service's path: the demo and synthetic data generators."""
