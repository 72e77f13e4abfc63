from mlstage.cli import main

main()
