"""One module per `toa` subcommand. Each defines `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Modules import heavy libraries inside `func`, so `toa --help` stays fast."""
