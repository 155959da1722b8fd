"""One module per `animegan` subcommand: argument parsing and a call into the library."""
