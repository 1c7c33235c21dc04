"""One module per ``tune`` sub-command; each has ``add_parser(subparsers)`` and ``main(args)``."""
