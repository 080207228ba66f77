from soundmon.cli import main

main()
