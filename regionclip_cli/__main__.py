from regionclip_cli.cli import main

main()
