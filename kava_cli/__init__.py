"""The `kava` command line: a thin dispatcher over the subcommands of each layer."""
