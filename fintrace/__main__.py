from fintrace.cli import main

main()
