from resizer.cli import main

main()
