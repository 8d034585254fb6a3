from frcnn_cli.cli.app import main

main()
