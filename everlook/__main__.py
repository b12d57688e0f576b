from everlook.quick import main

main()
