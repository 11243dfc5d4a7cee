from regionclip_cli.cli.app import main

main()
