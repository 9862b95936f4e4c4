from mtserve.cli import main

main()
