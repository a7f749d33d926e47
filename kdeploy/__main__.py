from kdeploy.cli import main

main()
