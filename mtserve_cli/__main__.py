from mtserve_cli import main

main()
