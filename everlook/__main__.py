from everlook.cli import main

main()
