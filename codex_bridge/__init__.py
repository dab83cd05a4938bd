"""The program: settings, command line, and the service assembled from bridge,
supervisor and http_front. Nothing imports it."""
