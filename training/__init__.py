"""Training side of KaVa: data, recipes and loops that import `kava/`, never the server."""
