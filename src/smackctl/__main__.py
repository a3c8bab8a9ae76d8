from smackctl.cli.app import main

main()
