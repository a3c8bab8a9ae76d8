from smackctl.cli import main

main()
