from infra.receiver.app import main

main()
